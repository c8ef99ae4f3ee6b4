/* cookiesaver pixel.js: first-party behaviour tracking for customer sites.
 *
 *   <script src="https://pxl.example.com/pixel.js" data-site="SITE_ID" async></script>
 *   cookiesaver.track("goal_name", {value: "42"});   // custom events and goals
 *
 * Browsers that block third-party cookies never send the pixel domain's cookie
 * from a customer's page. A click-through redirect whose destination carries
 * {cs_vid} puts the visitor id in the landing URL; this script keeps it in the
 * customer's own (first-party) storage and sends it with every event, and the
 * server accepts it only when its integrity tag checks. Nothing is sent when
 * the browser asks not to be tracked (DNT or GPC).
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) { return; }
  var base = new URL(script.src).origin;
  var site = script.getAttribute("data-site") || "";
  var KEY = "cs_vid";

  function optedOut() {
    return navigator.doNotTrack === "1" || window.doNotTrack === "1" || navigator.globalPrivacyControl === true;
  }

  function visitorId() {
    var fromUrl = null;
    try { fromUrl = new URL(window.location.href).searchParams.get(KEY); } catch (e) { fromUrl = null; }
    try {
      if (fromUrl) { window.localStorage.setItem(KEY, fromUrl); return fromUrl; }
      return window.localStorage.getItem(KEY);
    } catch (e) {
      return fromUrl;  /* storage disabled: use the URL's id for this page only */
    }
  }

  function send(name, props) {
    if (optedOut() || !site) { return; }
    var vid = visitorId();
    var event = {e: name, url: String(window.location.href).slice(0, 2000), ref: String(document.referrer || "").slice(0, 2000)};
    if (props) { event.props = props; }
    var body = {site: site, events: [event]};
    if (vid) { body.vid = vid; }
    var payload = JSON.stringify(body);
    /* text/plain is a CORS-safelisted type: no preflight, and sendBeacon allows it. */
    if (navigator.sendBeacon && navigator.sendBeacon(base + "/pixel", new Blob([payload], {type: "text/plain"}))) {
      return;
    }
    var q = "site=" + encodeURIComponent(site) + "&e=" + encodeURIComponent(name) +
      "&url=" + encodeURIComponent(event.url) + "&ref=" + encodeURIComponent(event.ref);
    if (vid) { q += "&cs_vid=" + encodeURIComponent(vid); }
    if (props) {
      Object.keys(props).forEach(function (k) { q += "&p." + encodeURIComponent(k) + "=" + encodeURIComponent(String(props[k])); });
    }
    new Image(1, 1).src = base + "/pixel?" + q;
  }

  var queued = (window.cookiesaver && window.cookiesaver.q) || [];
  window.cookiesaver = {track: send, visitorId: visitorId};
  send("page_view");
  queued.forEach(function (args) { send(args[0], args[1]); });
})();
