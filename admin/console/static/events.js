// Events (tenant_admin): the audit log, filtered by key id and type.
import * as api from './api.js';
import { h, timeCell } from './dom.js';

const PAGE = 50;

export async function eventsPage() {
  const state = { key: '', type: '', cursors: [''], page: 0 };
  const keyInput = h('input', { type: 'search', id: 'event-key', 'aria-label': 'Key ID', placeholder: 'Key ID (key_…)' });
  const typeInput = h('input', { type: 'search', id: 'event-type', 'aria-label': 'Event type', placeholder: 'Type, e.g. key.revoked', list: 'event-types' });
  const types = h('datalist', { id: 'event-types' }, ['key.created', 'key.updated', 'key.rotated', 'key.revoked', 'key.deleted',
    'key.requests_denied', 'settings.updated', 'user.updated', 'user.deleted', 'token.created', 'token.revoked', 'group.created', 'group.updated', 'group.deleted', 'tenant.created', 'tenant.updated']
    .map((t) => h('option', { value: t })));
  const apply = h('button', { type: 'submit', class: 'btn' }, 'Filter');
  const tbody = h('tbody');
  const message = h('p', { class: 'form-error', role: 'alert' });
  const prev = h('button', { type: 'button', class: 'btn' }, 'Previous');
  const next = h('button', { type: 'button', class: 'btn' }, 'Next');

  async function load() {
    message.textContent = '';
    const res = await api.call('GET', api.tpath('events'), { query: { key_id: state.key, type: state.type, limit: PAGE, cursor: state.cursors[state.page] } });
    tbody.replaceChildren(...(res.events.length ? res.events.map((e) => h('tr', null,
      h('td', null, timeCell(e.time)), h('td', null, h('code', null, e.type)), h('td', null, e.actor),
      h('td', null, e.key_id ? h('code', null, e.key_id) : '—'),
      h('td', { class: 'detail' }, e.detail && Object.keys(e.detail).length ? h('code', null, JSON.stringify(e.detail)) : '—')))
      : [h('tr', null, h('td', { colspan: 5, class: 'empty' }, 'No events.'))]));
    state.cursors[state.page + 1] = res.next_cursor || null;
    prev.disabled = state.page === 0;
    next.disabled = !res.next_cursor;
  }
  const reload = () => load().catch((e) => { message.textContent = e.message; });
  const filter = h('form', { class: 'toolbar', role: 'search', novalidate: true }, keyInput, typeInput, types, apply);
  filter.addEventListener('submit', (ev) => {
    ev.preventDefault();
    state.key = keyInput.value.trim();
    state.type = typeInput.value.trim();
    state.page = 0;
    state.cursors = [''];
    reload();
  });
  prev.addEventListener('click', () => { state.page -= 1; reload(); });
  next.addEventListener('click', () => { state.page += 1; reload(); });
  await load();
  return h('section', { class: 'page events-page', 'aria-labelledby': 'events-title' },
    h('div', { class: 'page-head' }, h('h1', { id: 'events-title' }, 'Events')),
    filter, message,
    h('div', { class: 'table-wrap' }, h('table', null,
      h('thead', null, h('tr', null, ['Time', 'Type', 'Actor', 'Key', 'Detail'].map((c) => h('th', { scope: 'col' }, c)))), tbody)),
    h('div', { class: 'pager' }, prev, next));
}
