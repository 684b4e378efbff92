// Shared widgets: labelled form fields with their error slot, modal
// dialogs (<dialog> with showModal: focus trapped, Esc closes, focus goes
// back where it was), confirmations and the copy-once secret modal.
import { h, id } from './dom.js';

// field is a labelled control with a hint and an error slot. opts: label,
// name (the API's field name, where its 400 "fields" errors go), type
// ("text", "textarea", "select", "checkbox", "switch", "number", "date",
// "password"), value, options ([{value, label}]) for selects, hint, and any
// input attributes in attrs.
export function field(opts) {
  const inputId = id(`f-${opts.name}`);
  const errId = `${inputId}-error`;
  const hintId = opts.hint ? `${inputId}-hint` : null;
  const described = [hintId, errId].filter(Boolean).join(' ');
  const common = { id: inputId, name: opts.name, 'aria-describedby': described, ...(opts.attrs || {}) };
  let control;
  switch (opts.type) {
    case 'textarea':
      control = h('textarea', { ...common, rows: opts.rows || 2, value: opts.value ?? '' });
      break;
    case 'select':
      control = h('select', common, (opts.options || []).map((o) =>
        h('option', { value: o.value, selected: String(o.value) === String(opts.value ?? '') }, o.label)));
      break;
    case 'checkbox':
    case 'switch':
      control = h('input', { ...common, type: 'checkbox', role: opts.type === 'switch' ? 'switch' : null, checked: opts.value });
      break;
    default:
      control = h('input', { ...common, type: opts.type || 'text', value: opts.value ?? '' });
  }
  const label = h('label', { for: inputId }, opts.label);
  const wrap = h('div', { class: `field field-${opts.type || 'text'}`, 'data-field': opts.name },
    opts.type === 'checkbox' || opts.type === 'switch' ? [control, label] : [label, control],
    hintId ? h('p', { class: 'hint', id: hintId }, opts.hint) : null,
    h('p', { class: 'field-error', id: errId }));
  wrap.control = control;
  // A changed value is a new attempt: its old error goes.
  control.addEventListener('input', () => {
    wrap.querySelector('.field-error').textContent = '';
    control.removeAttribute('aria-invalid');
  });
  return wrap;
}

// formError is the form-level message slot (errors without a field).
export function formError() {
  return h('p', { class: 'form-error', role: 'alert' });
}

// clearErrors empties a form's error slots.
export function clearErrors(form) {
  for (const el of form.querySelectorAll('.field-error, .form-error')) el.textContent = '';
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
}

// showError puts an API error next to the fields it names ("rules[1].paths"
// goes to the "rules" field when there is no field of that exact name);
// the rest, and the message, go to the form's message slot.
export function showError(form, err) {
  clearErrors(form);
  const fields = (err && err.fields) || {};
  const rest = [];
  let first = null;
  for (const [name, problem] of Object.entries(fields)) {
    const root = name.split(/[.[]/)[0];
    const wrap = form.querySelector(`[data-field="${CSS.escape(name)}"]`) ||
      form.querySelector(`[data-field="${CSS.escape(root)}"]`);
    if (!wrap) {
      rest.push(`${name}: ${problem}`);
      continue;
    }
    const slot = wrap.querySelector('.field-error');
    // "ip_allowlist[2]" and "rules[0].methods" name a line of a textarea.
    const m = name !== root && name.slice(root.length).match(/^\[(\d+)\]\.?(.*)$/);
    const sub = m ? m[2].replace(/\[\d+\]/g, '') : '';
    const text = m ? `line ${Number(m[1]) + 1}${sub ? ` (${sub})` : ''}: ${problem}` : problem;
    slot.textContent = slot.textContent ? `${slot.textContent}; ${text}` : text;
    wrap.control.setAttribute('aria-invalid', 'true');
    first = first || wrap.control;
  }
  const slot = form.querySelector('.form-error');
  if (slot && (rest.length || !first)) {
    slot.textContent = [err.message || String(err), ...rest].join(' — ');
  }
  (first || slot)?.focus?.();
}

// dialog opens a modal. body: nodes; returns {el, close}. onClose runs
// once when it closes for any reason (button, Esc).
export function dialog({ title, body, className, onClose }) {
  const titleId = id('dlg-title');
  const el = h('dialog', { class: `dlg ${className || ''}`, 'aria-labelledby': titleId },
    h('h2', { id: titleId }, title), body);
  const opener = document.activeElement;
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    if (el.open) el.close();
    el.remove();
    if (onClose) onClose();
    if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
  };
  el.addEventListener('close', close);
  document.body.append(el);
  el.showModal();
  return { el, close };
}

// confirm asks a question; resolves true when the action button is used.
export function confirm({ title, message, action, danger = true }) {
  return new Promise((resolve) => {
    let answer = false;
    const ok = h('button', { type: 'button', class: danger ? 'btn danger' : 'btn primary' }, action);
    const cancel = h('button', { type: 'button', class: 'btn', autofocus: true }, 'Cancel');
    const d = dialog({
      title,
      className: 'confirm',
      body: [h('p', { class: 'message' }, message), h('div', { class: 'actions' }, cancel, ok)],
      onClose: () => resolve(answer),
    });
    ok.addEventListener('click', () => { answer = true; d.close(); });
    cancel.addEventListener('click', () => d.close());
  });
}

// formDialog shows a form in a modal. fields: nodes; submit(form) does the
// work and returns true to close (errors it throws are shown on the form).
export function formDialog({ title, intro, fields, action, submit, danger = false }) {
  return new Promise((resolve) => {
    let result;
    const err = formError();
    const form = h('form', { class: 'form', novalidate: true }, intro ? h('p', { class: 'message' }, intro) : null,
      fields, err,
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'btn', onclick: () => d.close() }, 'Cancel'),
        h('button', { type: 'submit', class: danger ? 'btn danger' : 'btn primary' }, action)));
    const d = dialog({ title, body: form, onClose: () => resolve(result) });
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearErrors(form);
      const btn = form.querySelector('button[type=submit]');
      btn.disabled = true;
      try {
        result = await submit(form);
        d.close();
      } catch (e) {
        showError(form, e);
      } finally {
        btn.disabled = false;
      }
    });
  });
}

// showSecret shows a secret exactly once with a copy button. When the
// modal closes the text node is emptied and the reference dropped, so the
// secret is neither in the page nor held by the console.
export function showSecret({ title, what, extra }) {
  return new Promise((resolve) => {
    let secret = what.secret;
    what.secret = null; // the caller's copy goes now
    const code = h('code', { class: 'secret', id: 'secret-value', tabindex: '0', 'aria-label': 'Secret' }, secret);
    const status = h('p', { class: 'copy-status', role: 'status' });
    const copy = h('button', { type: 'button', class: 'btn primary', id: 'copy-secret' }, 'Copy');
    const close = h('button', { type: 'button', class: 'btn', id: 'close-secret' }, 'Close');
    const d = dialog({
      title,
      className: 'secret-dialog',
      body: [
        h('p', { class: 'warning', role: 'note' },
          'Copy this secret now and store it in a safe place. It will not be shown again: keygate keeps only a hash of it.'),
        extra ? h('p', { class: 'message' }, extra) : null,
        h('div', { class: 'secret-row' }, code, copy),
        status,
        h('div', { class: 'actions' }, close),
      ],
      onClose: () => {
        code.textContent = '';
        secret = null;
        resolve();
      },
    });
    copy.addEventListener('click', async () => {
      try {
        await navigator.clipboard.writeText(secret);
        status.textContent = 'Copied to the clipboard.';
      } catch {
        // No clipboard permission: select the text so Ctrl+C copies it.
        const range = document.createRange();
        range.selectNodeContents(code);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        status.textContent = 'Selected: press Ctrl+C (or ⌘C) to copy.';
      }
    });
    close.addEventListener('click', () => d.close());
    copy.focus();
  });
}

// badge is a status pill.
export function badge(text, kind) {
  return h('span', { class: `badge badge-${kind || text}` }, String(text).replace(/_/g, ' '));
}

// lines splits a textarea into trimmed, non-empty lines.
export function lines(text) {
  return text.split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
}

// dateToExpiry turns a yyyy-mm-dd date into the end of that day, UTC.
export function dateToExpiry(v) {
  return v ? `${v}T23:59:59Z` : undefined;
}
