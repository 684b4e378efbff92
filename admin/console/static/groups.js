// Groups (tenant_admin): authorization groups with their route rules and
// rate limit.
import * as api from './api.js';
import { h } from './dom.js';
import { field, confirm, formDialog, lines } from './ui.js';

// ruleText shows a rule as "GET POST /orders/* /items/*".
const ruleText = (r) => [...(r.methods || []), ...(r.paths || [])].join(' ') || 'any route';

// parseRules reads one rule per line: methods (words) and paths (/…).
function parseRules(text) {
  return lines(text).map((l) => {
    const parts = l.split(/\s+/);
    return { methods: parts.filter((p) => !p.startsWith('/')).map((m) => m.toUpperCase()), paths: parts.filter((p) => p.startsWith('/')) };
  });
}

export async function groupsPage() {
  const tbody = h('tbody');
  const message = h('p', { class: 'form-error', role: 'alert' });

  async function load() {
    const { groups } = await api.call('GET', api.tpath('groups'), { query: { limit: 500 } });
    tbody.replaceChildren(...(groups.length ? groups.map(row) : [h('tr', null, h('td', { colspan: 5, class: 'empty' }, 'No groups yet.'))]));
  }
  const reload = () => load().catch((e) => { message.textContent = e.message; });

  function row(g) {
    const rl = g.rate_limit ? `${g.rate_limit.requests_per_second}/s, burst ${g.rate_limit.burst}` : 'none';
    return h('tr', { 'data-group': g.name },
      h('td', null, g.name), h('td', null, g.description || '—'),
      h('td', null, (g.rules && g.rules.length) ? h('ul', { class: 'rules' }, g.rules.map((r) => h('li', null, h('code', null, ruleText(r))))) : 'all routes'),
      h('td', null, rl),
      h('td', { class: 'actions-cell' },
        h('button', { type: 'button', class: 'btn small', 'aria-label': `Edit group ${g.name}`, onclick: () => edit(g) }, 'Edit'),
        h('button', { type: 'button', class: 'btn small danger', 'aria-label': `Delete group ${g.name}`, onclick: () => remove(g) }, 'Delete')));
  }

  async function edit(g) {
    const fields = [];
    if (!g) fields.push(field({ name: 'name', label: 'Group name', attrs: { required: true, autocomplete: 'off' } }));
    fields.push(
      field({ name: 'description', label: 'Description', value: g?.description || '' }),
      field({ name: 'rules', label: 'Rules', type: 'textarea', rows: 4, value: (g?.rules || []).map(ruleText).join('\n'),
        hint: 'One rule per line: methods then paths, e.g. “GET POST /orders/*”. No method: any method. Empty: all routes.' }),
      field({ name: 'requests_per_second', label: 'Rate limit: requests per second', type: 'number', value: g?.rate_limit?.requests_per_second ?? '',
        attrs: { min: 0, step: 'any' }, hint: 'Empty: no rate limit.' }),
      field({ name: 'burst', label: 'Rate limit: burst', type: 'number', value: g?.rate_limit?.burst ?? '', attrs: { min: 1 } }));
    const done = await formDialog({
      title: g ? `Edit group ${g.name}` : 'New group',
      fields,
      action: 'Save',
      submit: (form) => {
        const name = g ? g.name : form.elements.name.value.trim();
        if (!name) throw { message: 'Give the group a name.', fields: { name: 'required' } };
        const rps = form.elements.requests_per_second.value;
        const burst = form.elements.burst.value;
        const body = { description: form.elements.description.value, rules: parseRules(form.elements.rules.value), rate_limit: null };
        if (rps !== '' || burst !== '') body.rate_limit = { requests_per_second: Number(rps), burst: Number(burst) };
        return api.call('PUT', api.tpath('groups', name), { body });
      },
    });
    if (done) reload();
  }

  async function remove(g) {
    const ok = await confirm({ title: 'Delete group', message: `Delete the group ${g.name}? A group that keys or the default-group setting still use cannot be deleted.`, action: 'Delete' });
    if (!ok) return;
    message.textContent = '';
    try {
      await api.call('DELETE', api.tpath('groups', g.name));
    } catch (e) {
      message.textContent = e.message;
    }
    reload();
  }

  const add = h('button', { type: 'button', class: 'btn primary', id: 'new-group' }, 'New group');
  add.addEventListener('click', () => edit(null));
  await load();
  return h('section', { class: 'page groups-page', 'aria-labelledby': 'groups-title' },
    h('div', { class: 'page-head' }, h('h1', { id: 'groups-title' }, 'Groups'), h('div', { class: 'head-actions' }, add)),
    message,
    h('div', { class: 'table-wrap' }, h('table', null,
      h('thead', null, h('tr', null, ['Group', 'Description', 'Rules', 'Rate limit', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))), tbody)));
}
