// The subscribe page of energy2mqtt-push. Every URL is relative, so the
// page works at / as well as under a reverse proxy's sub-path or Home
// Assistant's ingress.
'use strict';

const TOKEN_KEY = 'e2m-push-token';
const $ = (id) => document.getElementById(id);

// `…/#token=<[push] token>` once: kept in this browser, removed from the
// address bar (and so from the history and bookmarks).
(function takeToken() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
})();

async function api(method, path, body) {
  const headers = {};
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch('api/' + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) throw new Error((data && data.error) || `${r.status} ${r.statusText}`);
  return data;
}

function bytesOf(base64url) {
  const b64 = base64url.replace(/-/g, '+').replace(/_/g, '/');
  const raw = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

function sameBytes(a, b) {
  if (!a || !b) return false;
  const x = new Uint8Array(a), y = new Uint8Array(b);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

const supported = () => 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;

async function registration() {
  await navigator.serviceWorker.register('sw.js');
  return navigator.serviceWorker.ready;
}

// Test hook: a headless browser in CI has no push service to subscribe
// at, so the test injects `window.e2mTestPushManager` (same methods as a
// PushManager) and everything after it is this page's own code path.
// Nothing sets it in normal use.
function pushManager(reg) {
  return window.e2mTestPushManager || reg.pushManager;
}

function say(text) { $('message').textContent = text || ''; }

async function refresh() {
  const state = $('state');
  if (!window.isSecureContext) {
    state.textContent = 'This page is not on HTTPS: browsers allow push only on https:// (or localhost). Open it through your HTTPS reverse proxy or Home Assistant.';
    return;
  }
  if (!supported()) {
    state.textContent = 'This browser cannot receive push notifications.';
    const ios = /iPad|iPhone|iPod/.test(navigator.userAgent);
    $('ios-hint').hidden = !(ios && !navigator.standalone);
    return;
  }
  const reg = await registration();
  const sub = await pushManager(reg).getSubscription();
  const blocked = Notification.permission === 'denied';
  state.textContent = blocked
    ? 'Notifications are blocked for this site: allow them in the browser settings.'
    : sub ? 'Notifications are on for this device.' : 'Notifications are off for this device.';
  $('subscribe').disabled = blocked || !!sub;
  $('unsubscribe').disabled = !sub;
  $('test').disabled = false;
  if (sub) {
    // Idempotent: keeps the sidecar's list right if it lost it (a new
    // storage dir) or the browser renewed the subscription meanwhile.
    await api('POST', 'subscriptions', sub.toJSON());
  }
}

async function subscribe() {
  const permission = await Notification.requestPermission();
  if (permission !== 'granted') {
    throw new Error('Notifications were not allowed: allow them for this site in the browser settings.');
  }
  const { key } = await api('GET', 'vapid-public-key');
  const applicationServerKey = bytesOf(key);
  const pm = pushManager(await registration());
  let sub = await pm.getSubscription();
  // A subscription made for another key (the sidecar's key changed)
  // would be refused by the push service: make a new one.
  if (sub && sub.options && sub.options.applicationServerKey
      && !sameBytes(sub.options.applicationServerKey, applicationServerKey)) {
    await sub.unsubscribe();
    sub = null;
  }
  if (!sub) sub = await pm.subscribe({ userVisibleOnly: true, applicationServerKey });
  await api('POST', 'subscriptions', sub.toJSON());
  say('');
}

async function unsubscribe() {
  const pm = pushManager(await registration());
  const sub = await pm.getSubscription();
  if (sub) {
    await api('DELETE', 'subscriptions', { endpoint: sub.endpoint });
    await sub.unsubscribe();
  }
  say('');
}

async function test() {
  const answer = await api('POST', 'test');
  const list = $('report');
  list.replaceChildren(...answer.channels.map((c) => {
    const li = document.createElement('li');
    li.textContent = `${c.ok ? '✓' : '✗'} ${c.channel}: ${c.result}`;
    return li;
  }));
  say(answer.channels.length ? '' : 'No channel to send to: turn on notifications here, or configure ntfy or Telegram.');
}

async function loadAlerts() {
  try {
    const a = await api('GET', 'alerts');
    const list = $('alerts');
    const active = Array.isArray(a.active) ? a.active : [];
    $('alerts-state').textContent = a.known === false
      ? 'No word from the bridge yet.'
      : active.length ? '' : 'None: all is well.';
    list.replaceChildren(...active.map((x) => {
      const li = document.createElement('li');
      li.className = String(x.level || '');
      li.textContent = x.message || `${x.rule} on ${x.device}`;
      const since = document.createElement('span');
      since.className = 'since';
      since.textContent = x.since ? `since ${new Date(x.since).toLocaleString()}` : '';
      li.append(since);
      return li;
    }));
  } catch (e) {
    $('alerts-state').textContent = `Cannot read the alerts: ${e.message}`;
  }
}

function action(fn) {
  return async () => {
    try { await fn(); } catch (e) { say(e.message); }
    try { await refresh(); } catch (e) { say(e.message); }
  };
}

document.addEventListener('DOMContentLoaded', () => {
  $('subscribe').addEventListener('click', action(subscribe));
  $('unsubscribe').addEventListener('click', action(unsubscribe));
  $('test').addEventListener('click', action(test));
  refresh().catch((e) => say(e.message));
  loadAlerts();
  setInterval(loadAlerts, 30000);
});
