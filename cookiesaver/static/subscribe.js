/*
 * The subscribe page's script (loaded from /push/subscribe.js: the page's CSP allows no inline script).
 *
 * Registers /push/sw.js for this site, asks permission on a click, subscribes
 * with the site's VAPID key, posts the subscription, and tells the opening
 * page the result with postMessage to the site's origin the server rendered
 * into data-origin (never '*'; nothing is posted when it is empty).
 */
'use strict';

(function () {
  const root = document.getElementById('push');
  const site = root.dataset.site;
  const vapidKey = root.dataset.vapidKey;
  const targetOrigin = root.dataset.origin;
  const linkKey = root.dataset.linkKey;
  const allow = document.getElementById('allow');
  const closeButton = document.getElementById('close');
  const status = document.getElementById('status');
  const target = window.opener || (window.parent !== window ? window.parent : null);

  function say(text) {
    status.textContent = text;
  }

  function tell(result) {
    if (!target || !targetOrigin) return;
    try {
      target.postMessage(Object.assign({ type: 'cookiesaver:push', site: site }, result), targetOrigin);
    } catch (e) {
      /* the opener navigated away */
    }
  }

  function finish(result, text) {
    say(text);
    tell(result);
    allow.hidden = true;
    closeButton.textContent = 'Close';
    closeButton.focus();
    if (result.status === 'subscribed' && window.opener) setTimeout(() => window.close(), 1500);
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

  function postJson(path, body) {
    return fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      credentials: 'same-origin',
    });
  }

  function waitActive(registration) {
    if (registration.active) return Promise.resolve(registration);
    return new Promise((resolve, reject) => {
      const worker = registration.installing || registration.waiting;
      if (!worker) {
        reject(new Error('the service worker did not install'));
        return;
      }
      worker.addEventListener('statechange', () => {
        if (worker.state === 'activated') resolve(registration);
        else if (worker.state === 'redundant') reject(new Error('the service worker failed to install'));
      });
      if (registration.active) resolve(registration);
    });
  }

  async function subscribe() {
    const scope = '/push/sites/' + encodeURIComponent(site) + '/';
    const registration = await waitActive(await navigator.serviceWorker.register('/push/sw.js', { scope: scope, updateViaCache: 'none' }));
    const key = b64urlToBytes(vapidKey);
    let subscription = await registration.pushManager.getSubscription();
    if (subscription && !sameBytes(subscription.options && subscription.options.applicationServerKey, key)) {
      /* The site's key was rotated: a subscription made with the old key can no longer be pushed to. */
      const old = subscription.endpoint;
      await subscription.unsubscribe();
      subscription = null;
      postJson('/push/unsubscribe', { endpoint: old, site: site }).catch(() => {});
    }
    if (!subscription) {
      subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    }
    const body = Object.assign(subscription.toJSON(), { site: site });
    if (linkKey) body.key = linkKey;
    const response = await postJson('/push/subscribe', body);
    if (!response.ok) throw new Error('the server answered ' + response.status);
    return (await response.json()).subscription;
  }

  async function run() {
    say('Turning notifications on…');
    try {
      const id = await subscribe();
      finish({ status: 'subscribed', subscription: id }, 'Notifications are on. You can close this window.');
    } catch (e) {
      finish({ status: 'error', error: String((e && e.message) || e) }, 'Something went wrong. Please try again later.');
    }
  }

  async function ask() {
    allow.disabled = true;
    say('Please answer your browser’s question.');
    let permission;
    try {
      permission = await Notification.requestPermission();
    } catch (e) {
      permission = 'default';
    }
    if (permission === 'granted') {
      await run();
    } else if (permission === 'denied') {
      finish({ status: 'denied' }, 'Notifications are blocked. You can allow them in your browser’s site settings.');
    } else {
      allow.disabled = false;
      allow.focus();
      say('You can allow notifications whenever you like.');
    }
  }

  closeButton.addEventListener('click', () => {
    tell({ status: 'dismissed' });
    window.close();
  });

  if (!('serviceWorker' in navigator) || !('PushManager' in window) || !('Notification' in window)) {
    finish({ status: 'unsupported' }, 'This browser does not support notifications.');
  } else if (Notification.permission === 'denied') {
    finish({ status: 'denied' }, 'Notifications are blocked. You can allow them in your browser’s site settings.');
  } else if (Notification.permission === 'granted') {
    run();
  } else {
    allow.hidden = false;
    allow.addEventListener('click', ask);
    allow.focus();
  }
})();
