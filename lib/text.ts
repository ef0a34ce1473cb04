// Text that came from someone else (an image reference, a registry's error message) on its way
// into a result, a log line or a Kubernetes Event: control characters and the invisible ones that
// reorder text (bidi overrides, which can make "evil" read as "live") are shown as escapes, and
// the whole is bounded.

// C0 and C1 controls, DEL, bidi marks, embeddings, overrides and isolates, zero-width characters
// and line/paragraph separators.
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;

/** `text` with unprintable characters escaped (\u{…}) and cut to `max` characters ("..." marks a cut). */
export function printable(text: string, max = 200): string {
  const escaped = text.replace(UNPRINTABLE, (character) => `\\u{${character.codePointAt(0)!.toString(16)}}`);
  return escaped.length > max ? `${escaped.slice(0, Math.max(0, max - 3))}...` : escaped;
}
