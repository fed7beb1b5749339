// Small DOM and formatting helpers. Text always goes in as text nodes, never
// as HTML, so nothing the API returns can become markup.

/**
 * el builds an element: attrs are attributes, except on* functions, which
 * become listeners; children are nodes or strings (null and "" are skipped).
 */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (typeof v === "function" && k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === "") continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** fmtTime shows an RFC 3339 time in the reader's locale and zone. */
export function fmtTime(s) {
  if (!s) return "";
  const d = new Date(s);
  return isNaN(d) ? s : timeFormat.format(d);
}

/** fmtDuration shows milliseconds as "850 ms", "2.5 s" or "1 min 4 s". */
export function fmtDuration(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)} min ${s % 60} s`;
}

/** firstLine is the first non-empty line of a (possibly long) message. */
export function firstLine(s) {
  if (!s) return "";
  return s.split(/\r?\n/).find((l) => l.trim() !== "") || "";
}
