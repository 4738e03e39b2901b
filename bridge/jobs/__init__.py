"""The job core: LoRAs registered, jobs planned, run, recorded and followed — nothing of HTTP.

- ``requests.py``   what the core is asked (typed, validated requests)
- ``records.py``    what the database returns (``LoraRecord``, ``JobRecord``, ``JobEvent``)
- ``database.py``   the registry and the jobs on SQLite or PostgreSQL (``db_backends.py``, ``migrations.py``)
- ``registry.py``   the rules for registering and uploading LoRAs (``uploads.py``, ``brand_store.py``)
- ``planner.py``    request + registry -> ``Plan`` (``character_paths.py``: a character in a video)
- ``runner.py``     plans run on the pod pool, cancelled, resumed (``outputs.py``: where outputs go)
- ``trainings.py``  LoRA trainings, on the same runner
- ``states.py``     the state machine every job moves through
- ``hub.py``        the event log's writers and readers (streams, waits, ``webhooks.py``)
- ``replicas.py``   leases: which replica runs which job; ``metrics.py``: Prometheus text
"""
