// What the pack's editor views share: writing a node's input as a user's edit would, and growing a
// node until its views are in sight. Not an extension itself.

// `widget` of `node` set to `value`, with what an edit by hand brings: its callback, the node's
// change hook (a shown result goes stale), and the workflow marked modified.
export function setWidgetValue(node, widget, value) {
  const old = widget.value;
  widget.value = value;
  widget.callback?.(widget.value);
  node.onWidgetChanged?.(widget.name, widget.value, old, widget);
  node.graph?.change?.();
}

// The node grows until its content is in view (it never shrinks a size the user chose).
export function grow(node) {
  const [width, height] = node.computeSize();
  if (height > node.size[1] || width > node.size[0]) node.setSize([Math.max(node.size[0], width), Math.max(node.size[1], height)]);
  node.setDirtyCanvas(true, true);
}
