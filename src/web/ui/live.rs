//! Live pages: `GET /ui/live.js`, the small script the dashboard, commit and jobset pages load to follow
//! `/v1/ws/builds`, and [`hook`], the element that tells it what to follow.
//!
//! The pages are complete without the script. With it, a page opens the WebSocket (the browser sends
//! the session cookie, so the read rules are the page's), subscribes as its hook says, and on events:
//! sets the state badge of each row marked `data-drv` with the derivation (`build_state_change`), writes
//! a jobset's counts into elements marked `data-counts-jobset` (`job_stats_update`), and refetches the page
//! itself to replace the hook's regions (elements by id) with their new versions: at most once a second,
//! and never sooner than ten times the last refetch's duration after it (a page that is slow to render
//! costs the server at most a tenth of its time per viewer).
//! A subscription the server refuses (the dashboard's `all` for a viewer who does not read everything)
//! falls back to refetching every [`POLL_SECONDS`]. The connection is reopened after it drops.

use maud::{html, Markup};

use super::AppState;

/// The route.
pub const PATH: &str = "/ui/live.js";
/// How often a page whose subscription was refused refetches its regions.
pub const POLL_SECONDS: u32 = 10;

/// The element that makes a page live: what to subscribe to (client messages without their `type`),
/// the ids of the regions refetched on events, and the script.
pub(super) fn hook(subscriptions: &serde_json::Value, regions: &[&str]) -> Markup {
    html! {
        p.muted id="live-updates" data-live=(subscriptions.to_string()) data-regions=(regions.join(" ")) data-poll=(POLL_SECONDS) {
            "live updates: " span id="live-status" { "off (needs JavaScript)" }
        }
        script src=(PATH) defer {}
    }
}

const SCRIPT: &str = r#"(function () {
  'use strict';
  var hook = document.getElementById('live-updates');
  var status = document.getElementById('live-status');
  if (!hook || !window.WebSocket || !window.fetch) return;
  var subs = JSON.parse(hook.dataset.live || '[]');
  var regions = (hook.dataset.regions || '').split(' ').filter(Boolean);
  var poll = Number(hook.dataset.poll || 10) * 1000;
  var stats = {};
  var reconnected = false;
  var updates = 0;
  // The next refetch waits at least a second after the last one, and ten times as long as it took (a
  // large commit page costs the server more to render: a viewer never keeps it busier than a tenth).
  var busy = false, again = false, next = 0, polling = null;
  function say(text) { if (status) status.textContent = text; }
  function cls(s) {
    if (['success', 'cached', 'passed', 'evaluated'].indexOf(s) >= 0) return 'ok';
    if (['failure', 'transitive-failure', 'eval-error', 'failed', 'blocked', 'failed-retry', 'cancelled'].indexOf(s) >= 0 || s.indexOf('interrupted') === 0) return 'bad';
    if (['building', 'evaluating', 'queued', 'buildable', 'awaiting-approval'].indexOf(s) >= 0) return 'run';
    return 'none';
  }
  function badge(s) {
    var b = document.createElement('span');
    b.className = 'badge ' + cls(s);
    b.dataset.state = s;
    b.textContent = s;
    return b;
  }
  function showCounts(m) {
    document.querySelectorAll('[data-counts-jobset="' + m.jobset + '"]').forEach(function (el) {
      el.textContent = '';
      el.appendChild(document.createTextNode(m.attributes + ' attributes (' + m.evaluation + '): '));
      Object.keys(m.counts).forEach(function (k) {
        el.appendChild(badge(k));
        el.appendChild(document.createTextNode(' ' + m.counts[k] + ' '));
      });
    });
  }
  function showState(m) {
    document.querySelectorAll('[data-drv]').forEach(function (el) {
      if (el.dataset.drv !== m.drv) return;
      el.textContent = '';
      el.appendChild(badge(m.state));
    });
  }
  function refresh() {
    if (!regions.length) return;
    if (busy) { again = true; return; }
    busy = true;
    setTimeout(function () {
      var started = Date.now();
      fetch(location.href, { credentials: 'same-origin' }).then(function (r) {
        return r.ok ? r.text() : null;
      }).then(function (text) {
        if (text) {
          var doc = new DOMParser().parseFromString(text, 'text/html');
          regions.forEach(function (id) {
            var now = document.getElementById(id), next = doc.getElementById(id);
            // Only what changed is replaced (a reader's selection and focus elsewhere stay).
            if (now && next && now.innerHTML !== next.innerHTML) now.replaceWith(document.importNode(next, true));
          });
          Object.keys(stats).forEach(function (k) { showCounts(stats[k]); });
        }
      }).catch(function () {}).then(function () {
        next = Date.now() + Math.max(1000, 10 * (Date.now() - started));
        busy = false;
        if (again) { again = false; refresh(); }
      });
    }, Math.max(0, next - Date.now()));
  }
  function fallback() {
    if (polling === null) polling = setInterval(refresh, poll);
    say('refreshing every ' + poll / 1000 + ' s');
  }
  function connect() {
    var ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/v1/ws/builds');
    ws.onopen = function () {
      say('connected');
      subs.forEach(function (s) {
        var m = { type: 'subscribe' };
        Object.keys(s).forEach(function (k) { m[k] = s[k]; });
        ws.send(JSON.stringify(m));
      });
    };
    ws.onmessage = function (e) {
      var m;
      try { m = JSON.parse(e.data); } catch (x) { return; }
      if (m.type === 'subscribed') {
        document.documentElement.dataset.live = 'subscribed';
        if (polling === null) say('live');
      }
      else if (m.type === 'error') fallback();
      else if (m.type === 'build_state_change') { updates++; showState(m); refresh(); }
      else if (m.type === 'job_stats_update') {
        // The counts sent with the first subscription describe the page as it was just rendered.
        var known = stats[m.jobset] !== undefined || reconnected;
        updates++; stats[m.jobset] = m; showCounts(m);
        if (known) refresh();
      }
      hook.dataset.updates = updates;
    };
    ws.onclose = function () {
      // Events may have been missed: the next connection refreshes the page.
      reconnected = true;
      if (polling === null) say('reconnecting');
      setTimeout(connect, 5000);
    };
  }
  connect();
})();
"#;

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at(PATH).get(|_req: tide::Request<AppState>| async move {
        let res = tide::Response::builder(200)
            .body(SCRIPT)
            .content_type("text/javascript; charset=utf-8")
            .header("Cache-Control", "no-cache")
            .build();
        Ok::<_, tide::Error>(res)
    });
}
