/*
 * cookiesaver push service worker.
 *
 * Served at the stable URL /push/sw.js and registered once per site with the
 * scope /push/sites/<site id>/, so every site on the pixel domain has its own
 * registration (and its own subscription, made with its own VAPID key). The
 * site id is read back from the scope. Formats: docs/push.md.
 */
'use strict';

const SCOPE_PATTERN = /\/push\/sites\/([^/]+)\/$/;
const SETTINGS_CACHE = 'cookiesaver-push-v1';
const MAX_MESSAGE = 128;

function siteId() {
  const match = SCOPE_PATTERN.exec(new URL(self.registration.scope).pathname);
  return match ? decodeURIComponent(match[1]) : null;
}

function settingsUrl() {
  return '/push/vapid-key?site=' + encodeURIComponent(siteId() || '');
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function b64urlToBytes(text) {
  const base64 = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  const raw = atob(base64);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function sameBytes(a, b) {
  if (!a || !b) return false;
  const x = new Uint8Array(a);
  const y = new Uint8Array(b);
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

async function endpointHash(endpoint) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(endpoint));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/* Site settings (VAPID key, default icon and badge): fetched at activation and kept in Cache Storage so a push never waits on the network. */
async function fetchSettings() {
  const response = await fetch(settingsUrl(), { credentials: 'same-origin', cache: 'no-cache' });
  if (!response.ok) throw new Error('settings: HTTP ' + response.status);
  const cache = await caches.open(SETTINGS_CACHE);
  await cache.put(settingsUrl(), response.clone());
  return response.json();
}

async function settings() {
  try {
    const cache = await caches.open(SETTINGS_CACHE);
    const cached = await cache.match(settingsUrl());
    if (cached) return await cached.json();
  } catch (e) {
    /* fall back to the network */
  }
  try {
    return await fetchSettings();
  } catch (e) {
    return {};
  }
}

/* POST as text/plain (no preflight); retried with backoff because workers may be stopped mid-way. The server dedupes. */
async function post(path, body, attempts) {
  for (let i = 0; i < attempts; i++) {
    try {
      const response = await fetch(path, {
        method: 'POST',
        headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
        body: JSON.stringify(body),
        credentials: 'same-origin',
        keepalive: true,
      });
      if (response.ok || (response.status >= 400 && response.status < 500 && response.status !== 429)) return response;
    } catch (e) {
      /* network error: retry */
    }
    if (i + 1 < attempts) await sleep(1000 * 2 ** i);
  }
  return null;
}

async function report(type, message, action) {
  const subscription = await self.registration.pushManager.getSubscription();
  if (!subscription) return;
  const body = { type: type, subscription: await endpointHash(subscription.endpoint) };
  if (message) body.message = message;
  if (action) body.action = action;
  await post('/push/events', body, 3);
}

async function sendSubscription(subscription) {
  const body = Object.assign(subscription.toJSON(), { site: siteId() });
  await post('/push/subscribe', body, 3);
}

function safeUrl(value) {
  if (typeof value !== 'string' || !value) return null;
  try {
    const url = new URL(value, self.location.origin);
    return url.protocol === 'https:' || url.protocol === 'http:' ? url.href : null;
  } catch (e) {
    return null;
  }
}

function optionalString(value) {
  return typeof value === 'string' && value ? value : undefined;
}

/* Returns {payload, message} or {error: 'invalid'|'expired', message}. */
function readPayload(data) {
  let payload;
  try {
    payload = data ? data.json() : null;
  } catch (e) {
    return { error: 'invalid', message: null };
  }
  if (!payload || typeof payload !== 'object' || Array.isArray(payload)) return { error: 'invalid', message: null };
  const message = typeof payload.message === 'string' && payload.message && payload.message.length <= MAX_MESSAGE ? payload.message : null;
  if (!message || typeof payload.title !== 'string' || !payload.title.trim()) return { error: 'invalid', message: message };
  if (payload.expires !== undefined && payload.expires !== null) {
    if (typeof payload.expires !== 'number' || !isFinite(payload.expires)) return { error: 'invalid', message: message };
    if (Date.now() / 1000 > payload.expires) return { error: 'expired', message: message };
  }
  return { payload: payload, message: message };
}

async function onPush(event) {
  const read = readPayload(event.data);
  if (read.error) {
    /* Never show a blank notification: report why nothing was shown instead. */
    await report(read.error, read.message);
    return;
  }
  const p = read.payload;
  const defaults = await settings();
  const maxActions = (self.Notification && Notification.maxActions) || 2;
  const actions = Array.isArray(p.actions)
    ? p.actions.filter((a) => a && typeof a.action === 'string' && a.action && typeof a.title === 'string').slice(0, maxActions)
    : [];
  const actionUrls = {};
  for (const a of actions) {
    const url = safeUrl(a.url);
    if (url) actionUrls[a.action] = url;
  }
  const options = {
    body: optionalString(p.body),
    icon: optionalString(p.icon) || optionalString(defaults.icon),
    image: optionalString(p.image),
    badge: optionalString(p.badge) || optionalString(defaults.badge),
    tag: optionalString(p.tag),
    data: { url: safeUrl(p.url), message: read.message, actions: actionUrls },
    actions: actions.map((a) => ({ action: a.action, title: a.title, icon: optionalString(a.icon) })),
  };
  for (const name of Object.keys(options)) if (options[name] === undefined) delete options[name];
  if (options.tag) options.renotify = true;
  await self.registration.showNotification(p.title, options);
  await report('delivered', read.message);
}

async function openOrFocus(url) {
  const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  for (const client of windows) {
    if (client.url === url && 'focus' in client) return client.focus();
  }
  return self.clients.openWindow(url);
}

async function resubscribe(oldSubscription, newSubscription) {
  let subscription = newSubscription || (await self.registration.pushManager.getSubscription());
  if (!subscription) {
    const fresh = await fetchSettings();
    subscription = await self.registration.pushManager.subscribe({
      userVisibleOnly: true,
      applicationServerKey: b64urlToBytes(fresh.key),
    });
  }
  if (oldSubscription && oldSubscription.endpoint !== subscription.endpoint) {
    await post('/push/unsubscribe', { endpoint: oldSubscription.endpoint, site: siteId() }, 2);
  }
  await sendSubscription(subscription);
}

/* Browsers change or drop subscriptions silently: every activation re-sends the current one, renewing it if the site's key changed. */
async function onActivate() {
  let current = {};
  try {
    current = await fetchSettings();
  } catch (e) {
    /* offline: keep what we have */
  }
  let subscription = await self.registration.pushManager.getSubscription();
  if (!subscription) return;
  if (current.key && !sameBytes(subscription.options && subscription.options.applicationServerKey, b64urlToBytes(current.key))) {
    const old = subscription;
    await old.unsubscribe();
    await resubscribe(old, null);
    return;
  }
  await sendSubscription(subscription);
}

self.addEventListener('install', (event) => {
  event.waitUntil(self.skipWaiting());
});

self.addEventListener('activate', (event) => {
  event.waitUntil(Promise.all([self.clients.claim(), onActivate().catch(() => {})]));
});

self.addEventListener('push', (event) => {
  event.waitUntil(onPush(event));
});

self.addEventListener('notificationclick', (event) => {
  const notification = event.notification;
  const data = notification.data || {};
  const action = event.action || null;
  notification.close();
  const url = (action && data.actions && data.actions[action]) || data.url;
  event.waitUntil(Promise.all([url ? openOrFocus(url) : Promise.resolve(), report('clicked', data.message, action)]));
});

self.addEventListener('notificationclose', (event) => {
  const data = event.notification.data || {};
  event.waitUntil(report('closed', data.message));
});

self.addEventListener('pushsubscriptionchange', (event) => {
  event.waitUntil(resubscribe(event.oldSubscription, event.newSubscription));
});
