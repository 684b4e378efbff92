// The API keys page: the tenant admin's table of every key (and the
// developer's own keys), with search, filters, paging, bulk revoke, and the
// generate, edit, rotate, revoke, delete and usage dialogs.
import * as api from './api.js';
import { h, fmtTime, timeCell, debounce } from './dom.js';
import { field, confirm, formDialog, showSecret, badge, lines, dateToExpiry, dialog } from './ui.js';
import { usageChart } from './chart.js';

const PAGE = 25;

// A click outside an open row menu closes it.
document.addEventListener('click', (ev) => {
  for (const m of document.querySelectorAll('details.row-menu[open]')) if (!m.contains(ev.target)) m.open = false;
});

async function groupOptions() {
  const { groups } = await api.call('GET', api.tpath('groups'), { query: { limit: 500 } });
  return [{ value: '', label: 'None' }, ...groups.map((g) => ({ value: g.name, label: g.name }))];
}

export async function keysPage(session) {
  const admin = session.admin;
  const state = { q: '', status: '', expiry: '', cursors: [''], page: 0, selected: new Set(), keys: [] };

  const usage = h('span', { class: 'usage', id: 'key-usage', role: 'status' });
  const generate = h('button', { type: 'button', class: 'btn primary', id: 'generate-key' }, 'Generate API key');
  // Bulk revoke is the tenant admin's (POST …/keys/revoke).
  const bulk = admin ? h('button', { type: 'button', class: 'btn danger', id: 'bulk-revoke', disabled: true }, 'Revoke') : null;
  const deleteAll = !admin ? h('button', { type: 'button', class: 'btn', id: 'delete-all' }, 'Delete all') : null;
  const search = h('input', { type: 'search', id: 'key-search', 'aria-label': 'Search keys by name, ID or owner',
    placeholder: admin ? 'Search name, ID or owner' : 'Search name or ID' });
  const status = h('select', { id: 'status-filter', 'aria-label': 'Status' },
    [['', 'All statuses'], ['active', 'Active'], ['revoked', 'Revoked'], ['expired', 'Expired']]
      .map(([v, l]) => h('option', { value: v }, l)));
  const expiry = h('select', { id: 'expiry-filter', 'aria-label': 'Expiry state' },
    [['', 'All expiry states'], ['valid', 'Valid'], ['expiring_soon', 'Expiring soon'], ['expired', 'Expired']]
      .map(([v, l]) => h('option', { value: v }, l)));
  const selectAll = admin ? h('input', { type: 'checkbox', id: 'select-all', 'aria-label': 'Select all keys on this page' }) : null;
  const tbody = h('tbody');
  const prev = h('button', { type: 'button', class: 'btn', id: 'prev-page' }, 'Previous');
  const next = h('button', { type: 'button', class: 'btn', id: 'next-page' }, 'Next');
  const pageInfo = h('span', { class: 'page-info', role: 'status' });
  const message = h('p', { class: 'form-error', role: 'alert' });

  const cols = ['Name', 'ID', 'Owner', admin ? 'Group' : null, 'Status', 'Expiry', 'Expires', 'Last used', 'Created', 'Updated', h('span', { class: 'sr-only' }, 'Actions')]
    .filter(Boolean);
  const table = h('table', { class: 'keys', id: 'keys-table' },
    h('caption', { class: 'sr-only' }, admin ? 'API keys of the tenant' : 'Your API keys'),
    h('thead', null, h('tr', null, admin ? h('th', { scope: 'col', class: 'check' }, selectAll) : null,
      cols.map((c) => h('th', { scope: 'col' }, c)))),
    tbody);

  function refreshBulk() {
    if (!admin) return;
    bulk.disabled = state.selected.size === 0;
    bulk.textContent = state.selected.size ? `Revoke (${state.selected.size})` : 'Revoke';
    const active = state.keys.filter((k) => k.status === 'active');
    selectAll.checked = active.length > 0 && active.every((k) => state.selected.has(k.id));
  }

  function row(k) {
    const mine = session.operator || k.owner === session.user;
    const active = k.status === 'active';
    const check = admin && h('input', { type: 'checkbox', class: 'row-check', 'aria-label': `Select key ${k.name}`,
      disabled: !active, checked: state.selected.has(k.id), value: k.id });
    if (check) {
      check.addEventListener('change', () => {
        if (check.checked) state.selected.add(k.id);
        else state.selected.delete(k.id);
        refreshBulk();
      });
    }
    // The row's actions sit in a "⋯" menu, as in the seeds: a <details>
    // disclosure, so it opens with Enter or Space and needs no script for
    // the keyboard; Esc and a click elsewhere close it.
    const menu = h('details', { class: 'row-menu' });
    const act = (label, cls, fn, show = true) => show
      ? h('button', { type: 'button', class: `btn menu-item ${cls}`, 'aria-label': `${label} key ${k.name}`, 'data-action': label.toLowerCase(),
        onclick: () => { menu.open = false; fn(); } }, label)
      : null;
    menu.append(
      h('summary', { class: 'btn small', 'aria-label': `Actions for key ${k.name}`, title: 'Actions' }, '⋯'),
      h('div', { class: 'menu' },
        act('Usage', '', () => openUsage(k)),
        act('Edit', '', () => openEdit(k), active),
        act('Rotate', '', () => openRotate(k), active || k.status === 'expired'),
        act('Revoke', 'danger', () => openRevoke(k), active),
        act('Delete', 'danger', () => openDelete(k), mine)));
    menu.addEventListener('toggle', () => {
      if (!menu.open) return;
      for (const other of document.querySelectorAll('details.row-menu[open]')) if (other !== menu) other.open = false;
    });
    menu.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && menu.open) {
        ev.preventDefault();
        menu.open = false;
        menu.querySelector('summary').focus();
      }
    });
    return h('tr', { 'data-id': k.id, 'data-status': k.status },
      check ? h('td', { class: 'check' }, check) : null,
      h('td', { class: 'name' }, h('span', { class: 'key-name' }, k.name),
        k.description ? h('span', { class: 'desc' }, k.description) : null),
      h('td', null, h('code', { class: 'key-id' }, k.id), h('span', { class: 'hint-text' }, k.hint)),
      h('td', { class: 'owner' }, k.owner),
      admin ? h('td', null, k.group || '—') : null,
      h('td', null, badge(k.status)),
      h('td', null, badge(k.expiry_state)),
      h('td', null, timeCell(k.expires_at, 'Never')),
      h('td', null, timeCell(k.last_used_at, 'Never')),
      h('td', null, timeCell(k.created_at)),
      h('td', null, timeCell(k.updated_at)),
      h('td', { class: 'actions-cell' }, menu));
  }

  // Answers can come back out of order (a filter changed twice quickly):
  // only the newest request's answer is shown.
  let loadSeq = 0;
  async function load() {
    const seq = ++loadSeq;
    message.textContent = '';
    const res = await api.call('GET', api.tpath('keys'), {
      query: { q: state.q, status: state.status, expiry_state: state.expiry, limit: PAGE, cursor: state.cursors[state.page] },
    });
    if (seq !== loadSeq) return;
    state.keys = res.keys;
    const visible = new Set(res.keys.map((k) => k.id));
    for (const sid of [...state.selected]) if (!visible.has(sid)) state.selected.delete(sid);
    tbody.replaceChildren(...(res.keys.length ? res.keys.map(row)
      : [h('tr', null, h('td', { colspan: cols.length + (admin ? 1 : 0), class: 'empty' }, state.q || state.status || state.expiry ? 'No key matches.' : 'No API keys yet.'))]));
    const u = res.usage || {};
    const figure = u.limit == null ? `${u.count} ${u.count === 1 ? 'key' : 'keys'}` : `${u.count} / ${u.limit} keys`;
    usage.textContent = admin ? figure : `${figure} in the tenant`;
    usage.title = 'Keys of the tenant / the tenant\'s key limit';
    state.cursors[state.page + 1] = res.next_cursor || null;
    prev.disabled = state.page === 0;
    next.disabled = !res.next_cursor;
    const from = state.page * PAGE;
    pageInfo.textContent = res.total ? `${from + 1}–${from + res.keys.length} of ${res.total}` : '0 keys';
    refreshBulk();
  }

  const reload = () => load().catch((e) => { message.textContent = e.message; });
  const restart = () => { state.page = 0; state.cursors = ['']; reload(); };

  search.addEventListener('input', debounce(() => { state.q = search.value.trim(); restart(); }, 250));
  status.addEventListener('change', () => { state.status = status.value; restart(); });
  expiry.addEventListener('change', () => { state.expiry = expiry.value; restart(); });
  prev.addEventListener('click', () => { if (state.page > 0) { state.page -= 1; reload(); } });
  next.addEventListener('click', () => { if (state.cursors[state.page + 1]) { state.page += 1; reload(); } });
  selectAll?.addEventListener('change', () => {
    for (const k of state.keys) if (k.status === 'active') {
      if (selectAll.checked) state.selected.add(k.id);
      else state.selected.delete(k.id);
    }
    for (const c of tbody.querySelectorAll('.row-check:not(:disabled)')) c.checked = selectAll.checked;
    refreshBulk();
  });

  bulk?.addEventListener('click', async () => {
    const ids = [...state.selected];
    const ok = await confirm({
      title: 'Revoke API keys',
      message: `Are you sure you want to revoke ${ids.length} API ${ids.length === 1 ? 'key' : 'keys'}? This action cannot be undone and any applications using these keys will lose access immediately.`,
      action: 'Revoke',
    });
    if (!ok) return;
    try {
      const { results } = await api.call('POST', api.tpath('keys', 'revoke'), { body: { ids } });
      state.selected.clear();
      await load();
      const failed = results.filter((r) => !r.ok);
      if (failed.length) message.textContent = `Not revoked: ${failed.map((r) => `${r.id} (${r.error})`).join(', ')}`;
    } catch (e) {
      message.textContent = e.message;
    }
  });

  async function openGenerate() {
    const fields = [
      field({ name: 'name', label: 'Key name', attrs: { required: true, minlength: 2, maxlength: 200 }, hint: '2–200 characters, to recognise the key in the list.' }),
      field({ name: 'description', label: 'Description', type: 'textarea', attrs: { maxlength: 1000 }, hint: 'Optional: what the key is used for (up to 1000 characters).' }),
    ];
    if (admin) {
      fields.push(field({ name: 'group', label: 'Authorization group', type: 'select', options: await groupOptions(),
        hint: 'Which routes the key may call, and how fast.' }));
    }
    fields.push(field({ name: 'expires_at', label: 'Expiration date', type: 'date',
      hint: 'The key stops working after this day (UTC). Empty: the tenant\'s maximum expiration, or never.' }));
    fields.push(field({ name: 'ip_allowlist', label: 'IP allowlist', type: 'textarea',
      hint: 'One IP address or CIDR range per line. Empty: any IP address.' }));
    if (admin) {
      fields.push(field({ name: 'owner', label: 'Owner', value: session.operator ? '' : session.user,
        attrs: { required: session.operator, autocomplete: 'off' },
        hint: session.operator ? 'Required: the user the key belongs to.' : 'The user the key belongs to (you by default).' }));
    }
    const created = await formDialog({
      title: 'Generate API key',
      fields,
      action: 'Generate',
      submit: async (form) => {
        const v = (n) => form.elements[n]?.value ?? '';
        const body = { name: v('name').trim(), description: v('description') };
        if (admin && v('group')) body.group = v('group');
        if (v('expires_at')) body.expires_at = dateToExpiry(v('expires_at'));
        const ips = lines(v('ip_allowlist'));
        if (ips.length) body.ip_allowlist = ips;
        if (admin && v('owner').trim()) body.owner = v('owner').trim();
        return api.call('POST', api.tpath('keys'), { body });
      },
    });
    if (!created) return;
    await showSecret({ title: 'API key generated', what: created,
      extra: `Key “${created.key.name}” (${created.key.id}). Use it in the X-API-Key header.` });
    restart();
  }
  generate.addEventListener('click', () => openGenerate().catch((e) => { message.textContent = e.message; }));

  async function openEdit(k) {
    const fields = [
      field({ name: 'name', label: 'Key name', value: k.name, attrs: { required: true, minlength: 2, maxlength: 200 } }),
      field({ name: 'description', label: 'Description', type: 'textarea', value: k.description, attrs: { maxlength: 1000 } }),
    ];
    if (admin) fields.push(field({ name: 'group', label: 'Authorization group', type: 'select', value: k.group || '', options: await groupOptions() }));
    fields.push(field({ name: 'ip_allowlist', label: 'IP allowlist', type: 'textarea', value: (k.ip_allowlist || []).join('\n'),
      hint: 'One IP address or CIDR range per line. Empty: any IP address. The expiry cannot be edited: rotate the key to change it.' }));
    const saved = await formDialog({
      title: 'Edit API key',
      intro: 'The key\'s secret is not affected by an edit.',
      fields,
      action: 'Save',
      submit: (form) => {
        const v = (n) => form.elements[n]?.value ?? '';
        const body = { name: v('name').trim(), description: v('description'), ip_allowlist: lines(v('ip_allowlist')) };
        if (admin) body.group = v('group') || null;
        return api.call('PATCH', api.tpath('keys', k.id), { body });
      },
    });
    if (saved) await reload();
  }

  async function openRotate(k) {
    const rotated = await formDialog({
      title: 'Rotate API key',
      intro: `Rotating “${k.name}” issues a new secret and invalidates the current one. All applications using the current secret will lose access immediately, unless you keep it valid for a grace period while you roll out the new one.`,
      fields: [
        field({ name: 'grace_period', label: 'Grace period (optional)', attrs: { placeholder: 'e.g. 1h', autocomplete: 'off' },
          hint: 'How long the current secret keeps working, as a duration such as 30m or 24h. Empty: it stops now.' }),
        field({ name: 'expires_at', label: 'New expiration date (optional)', type: 'date',
          hint: 'Empty: the tenant\'s maximum expiration, or never.' }),
      ],
      action: 'Rotate',
      danger: true,
      submit: (form) => {
        const body = {};
        const g = form.elements.grace_period.value.trim();
        if (g) body.grace_period = g;
        if (form.elements.expires_at.value) body.expires_at = dateToExpiry(form.elements.expires_at.value);
        return api.call('POST', api.tpath('keys', k.id, 'rotate'), { body });
      },
    });
    if (!rotated) return;
    await showSecret({ title: 'API key rotated', what: rotated,
      extra: `New secret of “${rotated.key.name}”. Update every application that uses this key.` });
    await reload();
  }

  async function openRevoke(k) {
    const ok = await confirm({
      title: 'Revoke API key',
      message: `Are you sure you want to revoke the API key “${k.name}”? This action cannot be undone and any applications using this key will lose access immediately.`,
      action: 'Revoke',
    });
    if (!ok) return;
    try {
      await api.call('POST', api.tpath('keys', k.id, 'revoke'));
      state.selected.delete(k.id);
    } catch (e) {
      message.textContent = e.message;
    }
    await reload();
  }

  async function openDelete(k) {
    const ok = await confirm({
      title: 'Delete API key',
      message: `Delete the API key “${k.name}”? Its record is removed (its events stay) and any applications using it lose access immediately. This cannot be undone.`,
      action: 'Delete',
    });
    if (!ok) return;
    try {
      await api.call('DELETE', api.tpath('keys', k.id));
      state.selected.delete(k.id);
    } catch (e) {
      message.textContent = e.message;
    }
    await reload();
  }

  if (deleteAll) {
    deleteAll.addEventListener('click', async () => {
      const ok = await confirm({
        title: 'Delete all your API keys',
        message: 'Delete every one of your API keys? Applications using them lose access immediately. This cannot be undone.',
        action: 'Delete all',
      });
      if (!ok) return;
      try {
        await api.call('DELETE', api.tpath('keys'), { query: { owner: 'me' } });
      } catch (e) {
        message.textContent = e.message;
      }
      restart();
    });
  }

  async function openUsage(k) {
    const body = h('div', { class: 'usage-body' }, h('p', { class: 'loading' }, 'Loading…'));
    const close = h('button', { type: 'button', class: 'btn' }, 'Close');
    const d = dialog({ title: `Usage of “${k.name}”, last 24 hours`, className: 'usage-dialog',
      body: [body, h('div', { class: 'actions' }, close)] });
    close.addEventListener('click', () => d.close());
    close.focus();
    try {
      const u = await api.call('GET', api.tpath('keys', k.id, 'usage'));
      const outcomes = Object.entries(u.outcomes || {}).sort((a, b) => b[1] - a[1]);
      body.replaceChildren(
        h('p', null, `${u.total} requests from ${fmtTime(u.from)} to ${fmtTime(u.to)}`,
          u.last_used_at ? `; last used ${fmtTime(u.last_used_at)}${u.last_used_ip ? ` from ${u.last_used_ip}` : ''}` : '', '.'),
        usageChart(u),
        outcomes.length ? h('ul', { class: 'outcomes' }, outcomes.map(([o, n]) =>
          h('li', null, badge(o, o === 'ok' ? 'active' : 'denied'), ` ${n}`))) : null);
    } catch (e) {
      body.replaceChildren(h('p', { class: 'form-error', role: 'alert' }, e.message));
    }
  }

  await load();
  // As in the seeds: keys start disabled; say where to turn them on.
  let notice = null;
  if (admin) {
    const st = await api.call('GET', api.tpath('settings'));
    if (!st.api_keys_enabled) {
      notice = h('p', { class: 'notice', role: 'note', id: 'keys-disabled' },
        'API keys are disabled for this tenant: the gateway refuses every key and none can be generated. Turn them on in ',
        h('a', { href: '#/settings' }, 'Settings'), '.');
    }
  }
  return h('section', { class: 'page keys-page', 'aria-labelledby': 'keys-title' },
    h('div', { class: 'page-head' },
      h('h1', { id: 'keys-title' }, admin ? 'API keys' : 'Your API keys'), usage,
      h('div', { class: 'head-actions' }, deleteAll, bulk, generate)),
    notice,
    h('div', { class: 'toolbar', role: 'search' }, search, status, expiry),
    message,
    h('div', { class: 'table-wrap keys-wrap' }, table),
    h('div', { class: 'pager' }, prev, pageInfo, next));
}
