// DOM helpers. Everything that comes from the API becomes a text node or an
// attribute value through these: the console never parses markup from a
// string (and its Content-Security-Policy enforces Trusted Types, so
// assigning markup to an element would throw).

// h builds an element. attrs: "class", "on<event>" listeners, "value" and
// "checked" as properties, true for boolean attributes; null, undefined and
// false are left out. Children are nodes or strings (text), nested arrays
// allowed.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  add(el, children);
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';

// s builds an SVG element the same way.
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  setAttrs(el, attrs);
  add(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = Boolean(v);
    else if (k === 'style' || k.startsWith('on')) throw new Error(`attribute ${k} is not allowed`);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function add(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

let uid = 0;
// id returns a document-unique id with the given prefix.
export function id(prefix) {
  uid += 1;
  return `${prefix}-${uid}`;
}

// fmtTime shows an RFC 3339 time as "2026-12-03 11:34 UTC"; empty for null.
export function fmtTime(t, none = '—') {
  if (!t) return none;
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  return d.toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
}

// timeCell is a <time> element for a table: the date, then the time of day
// (UTC) below it; the full value is in datetime and title.
export function timeCell(t, none = '—') {
  if (!t) return none;
  const [day, clock] = fmtTime(t).split(' ');
  return h('time', { datetime: t, title: t }, h('span', { class: 'day' }, day), ' ', h('span', { class: 'clock' }, `${clock} UTC`));
}

// debounce delays fn until calls stop for ms.
export function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
