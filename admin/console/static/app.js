// The keygate management console (SPEC section 8): sign-in, the shell and
// the hash router. Pages live in their own modules.
import * as api from './api.js';
import { h } from './dom.js';
import { field, formError, showError } from './ui.js';
import { keysPage } from './keys.js';
import { settingsPage } from './settings.js';
import { usersPage } from './users.js';
import { groupsPage } from './groups.js';
import { eventsPage } from './events.js';

const root = document.getElementById('app');

// session is who is signed in: {principal, user, tenant, roles, admin,
// developer, operator}.
let session = null;

function describe(me) {
  const roles = me.roles || [];
  const operator = me.principal === 'operator';
  return {
    ...me,
    operator,
    admin: operator || roles.includes('tenant_admin'),
    developer: roles.includes('developer'),
  };
}

const pages = {
  keys: { title: 'API keys', render: keysPage, admin: false },
  settings: { title: 'Settings', render: settingsPage, admin: true },
  users: { title: 'Users', render: usersPage, admin: true },
  groups: { title: 'Groups', render: groupsPage, admin: true },
  events: { title: 'Events', render: eventsPage, admin: true },
};

function signInView(message) {
  const err = formError();
  const tok = field({ name: 'token', label: 'Admin token', type: 'password',
    hint: 'The operator token or your kga_… user token. It is kept in this browser tab only and forgotten when you sign out or close the tab.',
    attrs: { autocomplete: 'off', spellcheck: 'false', required: true } });
  const form = h('form', { class: 'form signin', novalidate: true },
    h('h1', null, 'Sign in to keygate'), tok, err,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn primary' }, 'Sign in')));
  if (message) err.textContent = message;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = tok.control.value.trim();
    if (!t) {
      showError(form, { message: 'Paste a token.', fields: { token: 'required' } });
      return;
    }
    try {
      const me = await api.call('GET', 'me', { tok: t });
      api.setToken(t);
      tok.control.value = '';
      await start(me);
    } catch (e) {
      showError(form, e.status === 401 ? { message: 'This token was not accepted.', fields: { token: 'not accepted' } } : e);
    }
  });
  root.replaceChildren(h('main', { id: 'main', class: 'signin-page' }, form));
  tok.control.focus();
}

function signOut(message) {
  api.forget();
  session = null;
  for (const d of document.querySelectorAll('dialog')) d.close();
  if (location.hash) history.replaceState(null, '', location.pathname);
  signInView(message);
}

async function start(me) {
  session = describe(me);
  if (!session.operator) api.setTenant(session.tenant);
  let tenants = [];
  if (session.operator) {
    tenants = (await api.call('GET', 'tenants', { query: { limit: 500 } })).tenants;
    if (!tenants.some((t) => t.id === api.tenant())) api.setTenant(tenants.length ? tenants[0].id : '');
  }
  renderShell(tenants);
  route();
}

let shell = null;

function renderShell(tenants) {
  const nav = h('nav', { 'aria-label': 'Console' }, h('ul', null,
    Object.entries(pages).filter(([, p]) => !p.admin || session.admin).map(([name, p]) =>
      h('li', null, h('a', { href: `#/${name}`, 'data-page': name }, p.title)))));
  let who;
  if (session.operator) {
    const picker = h('select', { id: 'tenant-picker', 'aria-label': 'Tenant' },
      tenants.map((t) => h('option', { value: t.id, selected: t.id === api.tenant() }, t.name ? `${t.name} (${t.id})` : t.id)));
    picker.addEventListener('change', () => {
      api.setTenant(picker.value);
      route();
    });
    who = h('div', { class: 'who' }, h('span', { class: 'principal' }, 'Operator'),
      h('label', { for: 'tenant-picker', class: 'tenant-label' }, 'Tenant'), picker);
  } else {
    who = h('div', { class: 'who' },
      h('span', { class: 'principal', id: 'principal' }, session.user),
      h('span', { class: 'roles' }, (session.roles || []).join(', ').replace(/_/g, ' ') || 'no role'),
      h('span', { class: 'tenant-name' }, `tenant ${session.tenant}`));
  }
  const out = h('button', { type: 'button', class: 'btn', id: 'sign-out' }, 'Sign out');
  out.addEventListener('click', () => signOut('Signed out. The token was forgotten.'));
  const main = h('main', { id: 'main', tabindex: '-1' });
  root.replaceChildren(
    h('header', { class: 'topbar' }, h('span', { class: 'brand' }, 'keygate'), nav, who, out),
    main);
  shell = { main, nav };
}

let renderSeq = 0;

async function route() {
  if (!session || !shell) return;
  // A dialog belongs to the page it was opened on.
  for (const d of document.querySelectorAll('dialog[open]')) d.close();
  let name = (location.hash.match(/^#\/(\w+)/) || [])[1] || 'keys';
  if (!pages[name] || (pages[name].admin && !session.admin)) name = 'keys';
  for (const a of shell.nav.querySelectorAll('a')) {
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const seq = ++renderSeq;
  const page = pages[name];
  document.title = `${page.title} · keygate`;
  const main = shell.main;
  main.replaceChildren(h('p', { class: 'loading' }, 'Loading…'));
  if (!api.tenant()) {
    main.replaceChildren(h('p', { class: 'empty' }, 'There is no tenant yet: create one with POST /v1/tenants or `keygate tenants create`.'));
    return;
  }
  try {
    const content = await page.render(session);
    if (seq === renderSeq) main.replaceChildren(content);
  } catch (e) {
    if (seq === renderSeq && e.status !== 401) main.replaceChildren(h('p', { class: 'form-error', role: 'alert' }, e.message));
  }
}

window.addEventListener('hashchange', route);
api.whenUnauthorized(() => signOut('Your token is no longer accepted; sign in again.'));

async function boot() {
  if (!api.token()) {
    signInView();
    return;
  }
  try {
    await start(await api.call('GET', 'me'));
  } catch (e) {
    if (e.status !== 401) signOut(e.message);
  }
}

boot();
