// The admin REST API client (SPEC section 4), same origin only. The token
// lives in this tab's sessionStorage (never the persistent local storage, never a cookie) and
// is forgotten on sign-out.

const TOKEN = 'keygate.token';
const TENANT = 'keygate.tenant';

// The API is the sibling of the console's directory (…/console/ → …/v1/),
// so the console also works when the admin site is mounted under a path.
const base = new URL('../v1/', import.meta.url);

// APIError is a failed call: status, code, message and per-field problems.
export class APIError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `request failed (HTTP ${status})`);
    this.status = status;
    this.code = e.code || '';
    this.fields = e.fields || {};
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN);
}

export function setToken(t) {
  sessionStorage.setItem(TOKEN, t);
}

export function tenant() {
  return sessionStorage.getItem(TENANT);
}

export function setTenant(t) {
  sessionStorage.setItem(TENANT, t);
}

// forget removes everything the console kept for this tab.
export function forget() {
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(TENANT);
}

let onUnauthorized = () => {};
// whenUnauthorized sets what happens when the API refuses the token.
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

// seg encodes one path segment.
export const seg = (v) => encodeURIComponent(v);

// call sends one request; path is relative to /v1/ ("tenants/x/keys").
// Query values that are empty are left out.
export async function call(method, path, { body, query, tok } = {}) {
  const url = new URL(path, base);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, v);
  }
  const headers = { Authorization: `Bearer ${tok || token() || ''}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
    referrerPolicy: 'no-referrer',
  });
  let data = null;
  if (res.status !== 204) {
    try {
      data = await res.json();
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const err = new APIError(res.status, data);
    if (res.status === 401 && !tok) onUnauthorized(err);
    throw err;
  }
  return data;
}

// tpath builds a path under the current tenant.
export function tpath(...segments) {
  return ['tenants', tenant(), ...segments].map(seg).join('/');
}
