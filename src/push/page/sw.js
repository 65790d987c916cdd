// The service worker of energy2mqtt-push: shows the notifications the
// sidecar pushes (JSON: title, body, level, tag, kind, time, link) and
// opens the page on a click.
'use strict';

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  let n;
  try {
    n = event.data ? event.data.json() : {};
  } catch (_) {
    n = { body: event.data ? event.data.text() : '' };
  }
  const clear = n.kind === 'clear';
  const options = {
    body: n.body || '',
    // Raise and clear of one alert share the tag: the clear replaces it.
    tag: n.tag || undefined,
    renotify: !!n.tag && !clear,
    silent: clear,
    requireInteraction: n.level === 'critical' && !clear,
    icon: 'icon-192.png',
    badge: 'icon-192.png',
    timestamp: Date.parse(n.time) || Date.now(),
    data: { link: n.link || null },
  };
  event.waitUntil(self.registration.showNotification(n.title || 'energy2mqtt', options));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const link = (event.notification.data && event.notification.data.link) || './';
  const target = new URL(link, self.registration.scope).href;
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    for (const w of windows) {
      if (w.url.startsWith(self.registration.scope) && 'focus' in w) {
        if (w.url !== target && 'navigate' in w) await w.navigate(target);
        return w.focus();
      }
    }
    return self.clients.openWindow(target);
  })());
});

// The push service renewed or dropped the subscription: tell the sidecar.
// (With [push] token set this call has no token and is refused; the page
// sends the new subscription the next time it is opened.)
self.addEventListener('pushsubscriptionchange', (event) => {
  event.waitUntil((async () => {
    const old = event.oldSubscription;
    const fresh = event.newSubscription || (old && await self.registration.pushManager.subscribe(old.options));
    const send = (method, body) => fetch(new URL('api/subscriptions', self.registration.scope), {
      method, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    });
    if (old) await send('DELETE', { endpoint: old.endpoint });
    if (fresh) await send('POST', fresh.toJSON());
  })());
});
