// Users (tenant_admin): the tenant's users, their roles and admin tokens.
import * as api from './api.js';
import { h, timeCell } from './dom.js';
import { field, formError, showError, clearErrors, confirm, dialog, formDialog, showSecret, badge, dateToExpiry } from './ui.js';

const ROLES = ['developer', 'tenant_admin'];

function rolesFields(current = []) {
  const boxes = ROLES.map((r) => field({ name: `role-${r}`, label: r.replace('_', ' '), type: 'checkbox', value: current.includes(r) }));
  const set = h('fieldset', { class: 'roles', 'data-field': 'roles' }, h('legend', null, 'Roles'), boxes,
    h('p', { class: 'field-error' }));
  set.control = boxes[0].control; // where an error about "roles" puts the focus
  return set;
}

function chosenRoles(form) {
  return ROLES.filter((r) => form.elements[`role-${r}`].checked);
}

export async function usersPage(session) {
  const tbody = h('tbody');
  const message = h('p', { class: 'form-error', role: 'alert' });

  async function load() {
    const { users } = await api.call('GET', api.tpath('users'), { query: { limit: 500 } });
    tbody.replaceChildren(...(users.length ? users.map(row) : [h('tr', null, h('td', { colspan: 4, class: 'empty' }, 'No users yet.'))]));
  }
  const reload = () => load().catch((e) => { message.textContent = e.message; });

  function row(u) {
    const btn = (label, cls, fn) => h('button', { type: 'button', class: `btn small ${cls}`, 'aria-label': `${label} user ${u.id}`, onclick: fn }, label);
    return h('tr', { 'data-user': u.id },
      h('td', null, u.id), h('td', null, (u.roles || []).map((r) => badge(r, 'role'))),
      h('td', null, timeCell(u.created_at)),
      h('td', { class: 'actions-cell' },
        btn('Roles', '', () => editRoles(u)),
        btn('Tokens', '', () => tokens(u)),
        btn('Delete', 'danger', () => remove(u))));
  }

  async function editRoles(u) {
    const done = await formDialog({
      title: `Roles of ${u.id}`,
      fields: [rolesFields(u.roles)],
      action: 'Save',
      submit: (form) => api.call('PUT', api.tpath('users', u.id), { body: { roles: chosenRoles(form) } }),
    });
    if (done) reload();
  }

  async function remove(u) {
    const ok = await confirm({ title: 'Delete user',
      message: `Delete the user ${u.id}? Its admin tokens and its active API keys are revoked (the events name them). This cannot be undone.`,
      action: 'Delete' });
    if (!ok) return;
    try {
      await api.call('DELETE', api.tpath('users', u.id));
    } catch (e) {
      message.textContent = e.message;
    }
    reload();
  }

  async function tokens(u) {
    const list = h('tbody');
    const err = h('p', { class: 'form-error', role: 'alert' });
    const loadTokens = async () => {
      const { tokens: ts } = await api.call('GET', api.tpath('users', u.id, 'tokens'), { query: { limit: 500 } });
      list.replaceChildren(...(ts.length ? ts.map((t) => h('tr', null,
        h('td', null, t.name), h('td', null, h('code', null, t.hint)), h('td', null, badge(t.status)),
        h('td', null, timeCell(t.created_at)), h('td', null, timeCell(t.expires_at, 'Never')),
        h('td', null, t.status === 'active' ? h('button', { type: 'button', class: 'btn small danger', 'aria-label': `Revoke token ${t.name}`,
          onclick: async () => {
            const ok = await confirm({ title: 'Revoke token', message: `Revoke the token “${t.name}” of ${u.id}? Whoever uses it loses access to the admin API at once. This cannot be undone.`, action: 'Revoke' });
            if (!ok) return;
            try { await api.call('DELETE', api.tpath('users', u.id, 'tokens', t.id)); } catch (e) { err.textContent = e.message; }
            loadTokens().catch((e) => { err.textContent = e.message; });
          } }, 'Revoke') : null)))
        : [h('tr', null, h('td', { colspan: 6, class: 'empty' }, 'No tokens.'))]));
    };
    const create = h('button', { type: 'button', class: 'btn primary' }, 'Create token');
    const close = h('button', { type: 'button', class: 'btn' }, 'Close');
    const d = dialog({ title: `Admin tokens of ${u.id}`, className: 'wide',
      body: [h('p', { class: 'message' }, 'A token signs its user in to the admin API and this console (kga_…).'),
        h('table', null, h('thead', null, h('tr', null, ['Name', 'Hint', 'Status', 'Created', 'Expires', ''].map((c) => h('th', { scope: 'col' }, c)))), list),
        err, h('div', { class: 'actions' }, close, create)] });
    close.addEventListener('click', () => d.close());
    create.addEventListener('click', async () => {
      const made = await formDialog({
        title: `New token for ${u.id}`,
        fields: [field({ name: 'name', label: 'Token name', attrs: { required: true } }),
          field({ name: 'expires_at', label: 'Expiration date (optional)', type: 'date' })],
        action: 'Create',
        submit: (form) => {
          const body = { name: form.elements.name.value.trim() };
          if (form.elements.expires_at.value) body.expires_at = dateToExpiry(form.elements.expires_at.value);
          return api.call('POST', api.tpath('users', u.id, 'tokens'), { body });
        },
      });
      if (made) await showSecret({ title: 'Admin token created', what: made, extra: `Token “${made.token.name}” of ${u.id}.` });
      loadTokens().catch((e) => { err.textContent = e.message; });
    });
    loadTokens().catch((e) => { err.textContent = e.message; });
  }

  const idField = field({ name: 'user', label: 'User ID', attrs: { required: true, autocomplete: 'off' } });
  const formErr = formError();
  const form = h('form', { class: 'form inline-form', novalidate: true },
    h('h2', null, 'Add a user'), idField, rolesFields(['developer']), formErr,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn primary' }, 'Add user')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const uid = idField.control.value.trim();
    if (!uid) { showError(form, { message: 'Give a user ID.', fields: { user: 'required' } }); return; }
    try {
      await api.call('PUT', api.tpath('users', uid), { body: { roles: chosenRoles(form) } });
      idField.control.value = '';
      reload();
    } catch (e) {
      showError(form, e);
    }
  });

  await load();
  return h('section', { class: 'page users-page', 'aria-labelledby': 'users-title' },
    h('div', { class: 'page-head' }, h('h1', { id: 'users-title' }, 'Users')),
    message,
    h('div', { class: 'table-wrap' }, h('table', null,
      h('thead', null, h('tr', null, ['User', 'Roles', 'Created', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))), tbody)),
    form);
}
