// Settings (tenant_admin): the tenant's API key settings.
import * as api from './api.js';
import { h } from './dom.js';
import { field, formError, showError, clearErrors } from './ui.js';

export async function settingsPage() {
  const [st, { groups }] = await Promise.all([
    api.call('GET', api.tpath('settings')),
    api.call('GET', api.tpath('groups'), { query: { limit: 500 } }),
  ]);
  const enabled = field({ name: 'api_keys_enabled', label: 'Enable API keys', type: 'switch', value: st.api_keys_enabled,
    hint: 'Turns every API key of the tenant on or off. While off, the gateway refuses every key and no key can be generated.' });
  const maxExp = field({ name: 'max_expiration', label: 'Maximum token expiration', value: st.max_expiration || '',
    attrs: { placeholder: 'no limit', autocomplete: 'off' },
    hint: 'A duration such as 720h (30 days). New keys expire at the latest this long after they are generated, and by default then. Empty: no limit. Existing keys keep their expiry.' });
  const maxKeys = field({ name: 'max_keys_per_user', label: 'Maximum of active API keys per user', type: 'number', value: st.max_keys_per_user,
    attrs: { min: 1, max: 1000, required: true },
    hint: '1–1000. Only affects new keys: generating one more is denied.' });
  const soon = field({ name: 'expiring_soon_window', label: 'Expiring-soon window', value: st.expiring_soon_window,
    attrs: { autocomplete: 'off' }, hint: 'Keys that expire within this duration show as “expiring soon” (e.g. 168h).' });
  const group = field({ name: 'default_group', label: 'Default group of developers\' keys', type: 'select', value: st.default_group || '',
    options: [{ value: '', label: 'None' }, ...groups.map((g) => ({ value: g.name, label: g.name }))],
    hint: 'Developers never choose a group: their new keys get this one.' });
  const err = formError();
  const saved = h('p', { class: 'saved', role: 'status', id: 'settings-status' });
  const form = h('form', { class: 'form settings', id: 'settings-form', novalidate: true },
    h('fieldset', null, h('legend', null, 'API keys'), enabled, maxExp, maxKeys, soon, group),
    err, h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn primary', id: 'save-settings' }, 'Save'), saved));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    saved.textContent = '';
    const n = Number(maxKeys.control.value);
    const body = {
      api_keys_enabled: enabled.control.checked,
      max_expiration: maxExp.control.value.trim() || null,
      max_keys_per_user: Number.isInteger(n) && maxKeys.control.value !== '' ? n : maxKeys.control.value,
      expiring_soon_window: soon.control.value.trim(),
      default_group: group.control.value || null,
    };
    try {
      const out = await api.call('PATCH', api.tpath('settings'), { body });
      enabled.control.checked = out.api_keys_enabled;
      maxExp.control.value = out.max_expiration || '';
      maxKeys.control.value = out.max_keys_per_user;
      soon.control.value = out.expiring_soon_window;
      saved.textContent = `Saved. API keys are ${out.api_keys_enabled ? 'enabled' : 'disabled'}.`;
    } catch (e) {
      showError(form, e);
    }
  });
  return h('section', { class: 'page settings-page', 'aria-labelledby': 'settings-title' },
    h('div', { class: 'page-head' }, h('h1', { id: 'settings-title' }, 'Settings')),
    h('p', { class: 'lead' }, 'Changes to limits affect new keys only.'),
    form);
}
