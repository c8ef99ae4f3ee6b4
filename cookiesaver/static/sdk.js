/*
 * cookiesaver push SDK, for customers' pages.
 *
 *   <script src="https://pxl.example.com/push/sdk.js" data-site="shop" defer></script>
 *   button.addEventListener('click', async () => {
 *     const result = await CookieSaverPush.subscribe({ site: 'shop', key: optionalKeyToken });
 *     // result.status: 'subscribed' | 'denied' | 'dismissed' | 'blocked' | 'unsupported' | 'error'
 *   });
 *
 * subscribe() must run inside a user gesture (a click) or the popup is blocked.
 * The result arrives by postMessage from the pixel domain; messages from any
 * other origin or window are ignored.
 */
(function () {
  'use strict';

  const script = document.currentScript;
  const pushOrigin = script && script.src ? new URL(script.src).origin : null;

  function subscribe(options) {
    const opts = options || {};
    const site = opts.site || (script && script.dataset.site);
    return new Promise((resolve, reject) => {
      if (!pushOrigin) {
        reject(new Error('cookiesaver: load sdk.js with a <script src> tag'));
        return;
      }
      if (!site) {
        reject(new Error('cookiesaver: a site id is required'));
        return;
      }
      const url = new URL('/push/subscribe', pushOrigin);
      url.searchParams.set('site', site);
      url.searchParams.set('origin', window.location.origin);
      if (opts.key) url.searchParams.set('key', opts.key);
      const width = opts.width || 480;
      const height = opts.height || 560;
      const left = Math.max(0, (window.screenX || 0) + ((window.outerWidth || width) - width) / 2);
      const top = Math.max(0, (window.screenY || 0) + ((window.outerHeight || height) - height) / 3);
      const popup = window.open(url.href, 'cookiesaver-push', 'popup,width=' + width + ',height=' + height + ',left=' + left + ',top=' + top);
      if (!popup) {
        resolve({ status: 'blocked', site: site });
        return;
      }
      let done = false;
      let timer = null;
      function finish(result) {
        if (done) return;
        done = true;
        window.removeEventListener('message', onMessage);
        clearInterval(timer);
        resolve(result);
      }
      function onMessage(event) {
        if (event.origin !== pushOrigin || event.source !== popup) return;
        const data = event.data;
        if (!data || data.type !== 'cookiesaver:push' || data.site !== site) return;
        finish({ status: String(data.status), site: site, subscription: data.subscription || null, error: data.error || null });
      }
      window.addEventListener('message', onMessage);
      timer = setInterval(() => {
        if (popup.closed) finish({ status: 'dismissed', site: site });
      }, 500);
    });
  }

  window.CookieSaverPush = Object.freeze({ subscribe: subscribe, origin: pushOrigin });
})();
