// The daemon's API, as the dashboard uses it. The session is an HttpOnly cookie set by a
// one-time login link; state changes carry `X-Corral-Client` (the API refuses simple
// cross-site requests). Nothing here ever turns server text into HTML.

import { signal } from './signal.js';

/** Set when the API answers 401: the page shows how to log in. */
export const loggedOut = signal(false);

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function request(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-Corral-Client'] = 'dashboard';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch('/api/v1' + path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) loggedOut.set(true);
  const text = await resp.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!resp.ok) {
    const e = (json && json.error) || {};
    throw new ApiError(resp.status, e.code || 'http_' + resp.status, e.message || text || resp.statusText);
  }
  return json;
}

export const get = (path) => request('GET', path);
export const post = (path, body = {}) => request('POST', path, body);
export const put = (path, body) => request('PUT', path, body);
export const enc = encodeURIComponent;

/** The base of a task's routes: this node's, or another node's through the hub. */
export function taskBase(node, name) {
  return node ? `/nodes/${enc(node)}/tasks/${enc(name)}` : `/tasks/${enc(name)}`;
}
