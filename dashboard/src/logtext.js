// How one log line is shown: ANSI colours as spans, a JSON object readably, a level,
// search matches marked. Everything is put in the page as text nodes (`textContent`),
// never as HTML: a line is hostile and `<img onerror>` in it stays characters.

import Anser from 'anser';

const LEVELS = {
  fatal: 'error', critical: 'error', crit: 'error', error: 'error', err: 'error', e: 'error',
  warning: 'warn', warn: 'warn', w: 'warn',
  info: 'info', notice: 'info', i: 'info', n: 'info',
  debug: 'debug', trace: 'debug', d: 'debug', t: 'debug',
};
export const LEVEL_NAMES = ['error', 'warn', 'info', 'debug', 'none'];
const WORD = /\b(FATAL|CRITICAL|CRIT|ERROR|ERR|WARNING|WARN|INFO|NOTICE|DEBUG|TRACE)\b/i;
// llama.cpp's own prefix: `0.01.234.567 W message`.
const LLAMA = /^\d+\.\d+\.\d+\.\d+ ([EWIDT]) /;

/** The plain text of a line: ANSI sequences taken out (only when it has any). */
export function plain(line) {
  return line.includes('\x1b') ? Anser.ansiToText(line) : line;
}

/** A parsed JSON object when the line is one, else null. */
export function asJson(text) {
  const t = text.trim();
  if (t.length < 2 || t[0] !== '{' || t[t.length - 1] !== '}') return null;
  try {
    const v = JSON.parse(t);
    return v && typeof v === 'object' && !Array.isArray(v) ? v : null;
  } catch {
    return null;
  }
}

/** The level a line states, if any: `error`, `warn`, `info`, `debug`, else `none`. */
export function levelOf(text, json) {
  if (json) {
    const l = json.level ?? json.lvl ?? json.severity ?? json.levelname;
    if (typeof l === 'string') return LEVELS[l.toLowerCase()] || 'none';
  }
  const m = LLAMA.exec(text);
  if (m) return LEVELS[m[1].toLowerCase()];
  const w = WORD.exec(text);
  return w ? LEVELS[w[1].toLowerCase()] : 'none';
}

/** A JSON object on one line: `key: value` pairs, strings unquoted. */
export function jsonPairs(obj) {
  return Object.entries(obj).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]);
}

function appendMarked(parent, text, re, cls) {
  if (!re) {
    parent.appendChild(document.createTextNode(text));
    return;
  }
  re.lastIndex = 0;
  let at = 0;
  let m;
  while ((m = re.exec(text)) !== null) {
    if (m[0].length === 0) {
      re.lastIndex++;
      continue;
    }
    if (m.index > at) parent.appendChild(document.createTextNode(text.slice(at, m.index)));
    const mark = document.createElement('mark');
    if (cls) mark.className = cls;
    mark.textContent = m[0];
    parent.appendChild(mark);
    at = m.index + m[0].length;
  }
  if (at < text.length) parent.appendChild(document.createTextNode(text.slice(at)));
}

/**
 * Fills `el` with the line: ANSI colours as styled spans (the colours are numbers anser
 * parsed, set through the style object), JSON as key/value pairs, matches of `re` marked.
 */
export function renderLine(el, line, json, re) {
  if (json) {
    for (const [k, v] of jsonPairs(json)) {
      const key = document.createElement('span');
      key.className = 'jk';
      key.textContent = k + '=';
      el.appendChild(key);
      const val = document.createElement('span');
      val.className = 'jv';
      appendMarked(val, v, re);
      el.appendChild(val);
      el.appendChild(document.createTextNode(' '));
    }
    return;
  }
  if (!line.includes('\x1b')) {
    appendMarked(el, line, re);
    return;
  }
  for (const seg of Anser.ansiToJson(line, { json: true, remove_empty: true })) {
    const span = document.createElement('span');
    if (seg.fg) span.style.color = `rgb(${seg.fg})`;
    if (seg.bg) span.style.backgroundColor = `rgb(${seg.bg})`;
    for (const d of seg.decorations || []) {
      if (d === 'bold') span.style.fontWeight = 'bold';
      else if (d === 'italic') span.style.fontStyle = 'italic';
      else if (d === 'underline') span.style.textDecoration = 'underline';
      else if (d === 'dim') span.style.opacity = '0.7';
    }
    appendMarked(span, seg.content, re);
    el.appendChild(span);
  }
}

/** The search as a global RegExp, or null for none; throws on a bad expression. */
export function searchRe(q, regex, caseSensitive) {
  if (!q) return null;
  const src = regex ? q : q.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(src, caseSensitive ? 'g' : 'gi');
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

export function clock(ts) {
  const d = new Date(ts * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function dateTime(ts) {
  const d = new Date(ts * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(ts)}`;
}
