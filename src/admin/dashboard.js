"use strict";
const $ = (id) => document.getElementById(id);
const POLL_MS = 1000, SHOWN = 50;
const history = new Map();      // "route\u0000pool" -> [{t, requests, errors, p50_ms, p99_ms}]
let since = 0, keepMs = 900000, intervalS = 2, data = null, colors = new Map();

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function color(pool) {
  if (!colors.has(pool)) colors.set(pool, `var(--p${colors.size % 6})`);
  return colors.get(pool);
}
function pct(x, digits = 1) { return (x * 100).toFixed(digits) + "%"; }
function ms(x) { return x == null ? "–" : x < 10 ? x.toFixed(2) + " ms" : x < 1000 ? x.toFixed(0) + " ms" : (x / 1000).toFixed(2) + " s"; }
function dur(s) {
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(r).padStart(2, "0")}s` : `${r}s`;
}
function ago(iso) { return dur((Date.now() - Date.parse(iso)) / 1000) + " ago"; }

async function api(path, opts = {}) {
  const r = await fetch(path, opts);
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  return { ok: r.ok, status: r.status, body, headers: r.headers };
}

let shownKey = "";

async function poll() {
  try {
    // The routes the page shows (the filter's, tripped first, 50 at most), then the rest.
    const q = $("filter").value.trim();
    const routes = await api(`/api/routes?limit=${SHOWN}&q=${encodeURIComponent(q)}`);
    if (!routes.ok) throw new Error("admin API answered with an error");
    const names = routes.body.map((r) => r.name).join(",");
    if (names !== shownKey) { history.clear(); since = 0; shownKey = names; }
    const [pools, flags, config, hist, fleet] = await Promise.all([
      api("/api/pools"), api("/api/flags"), api("/api/config"),
      api(`/api/history?since=${since}&routes=${encodeURIComponent(names)}`), api("/api/fleet"),
    ]);
    if (!pools.ok || !flags.ok || !config.ok || !hist.ok || !fleet.ok) throw new Error("admin API answered with an error");
    absorb(hist.body);
    data = {
      routes: routes.body, total: Number(routes.headers.get("x-switchyard-total") || routes.body.length),
      pools: pools.body, flags: flags.body, config: config.body, fleet: fleet.body, now: hist.body.now,
    };
    $("live").className = "on";
    render();
  } catch (e) {
    $("live").className = "off";
    $("revision").textContent = "admin API unreachable — retrying";
  }
}

function absorb(h) {
  keepMs = h.keep_s * 1000; intervalS = h.interval_s;
  for (const s of h.series) {
    const key = s.route + "\u0000" + s.pool;
    const list = history.get(key) || [];
    for (const x of s.samples) if (!list.length || x.t > list[list.length - 1].t) list.push(x);
    while (list.length && list[0].t < h.now - keepMs) list.shift();
    history.set(key, list);
    if (s.samples.length) since = Math.max(since, s.samples[s.samples.length - 1].t);
  }
}

/// The pool's figures over its last sample interval (zero when it had no requests then).
function latest(route, pool, now) {
  const list = history.get(route + "\u0000" + pool) || [];
  const last = list[list.length - 1];
  if (!last || now - last.t > intervalS * 1000 * 1.5 + POLL_MS) return { rps: 0, errorRate: null, p50: null, p99: null };
  return { rps: last.requests / intervalS, errorRate: last.errors / last.requests, p50: last.p50_ms, p99: last.p99_ms };
}

/// The charts' span: the last 15 minutes, or less while the history is younger (2 min at least).
function span(now) {
  let first = now;
  for (const list of history.values()) if (list.length) first = Math.min(first, list[0].t - intervalS * 1000);
  return Math.min(keepMs, Math.max(120000, now - first));
}

function spark(route, pool, pick, now, fmt, cls) {
  const list = history.get(route + "\u0000" + pool) || [];
  const w = 300, h = 36, spanMs = span(now), start = now - spanMs;
  const pts = list.filter((x) => x.t >= start).map((x) => [x.t, pick(x)]).filter((p) => p[1] != null);
  const max = Math.max(1e-9, ...pts.map((p) => p[1]));
  const X = (t) => ((t - start) / spanMs) * w, Y = (v) => h - 2 - (v / max) * (h - 6);
  // Intervals without requests are zero: the line drops to the axis between samples.
  let d = "", prev = null;
  for (const [t, v] of pts) {
    if (prev == null || t - prev > intervalS * 1000 * 1.5) d += (prev == null ? "" : ` L${X(prev + intervalS * 1000).toFixed(1)},${h - 2}`) + ` M${X(t - intervalS * 1000).toFixed(1)},${h - 2}`;
    d += ` L${X(t).toFixed(1)},${Y(v).toFixed(1)}`;
    prev = t;
  }
  const top = pts.length ? "max " + fmt(max) : "no requests";
  return `<div class="chart ${cls}" title="the last ${dur(spanMs / 1000)}">${cls} <span style="float:right">${esc(top)}</span>
    <svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none"><path d="${d}" fill="none" stroke="${color(pool)}" stroke-width="1.5"/></svg></div>`;
}

function bar(shares) {
  return `<div class="bar">${shares.filter((s) => s.share > 0).map((s) =>
    `<span style="width:${s.share * 100}%;background:${color(s.pool)}" title="${esc(s.pool)} ${pct(s.share, 2)}">${esc(s.pool)} ${pct(s.share, 0)}</span>`).join("")}</div>`;
}

function routeCard(r, now) {
  const guard = r.guard, rollout = r.rollout;
  const badges = [];
  if (r.tripped) badges.push(`<span class="badge bad tripped-badge">tripped</span>`);
  if (guard) badges.push(guard.dry_run ? `<span class="badge warn">guard: dry run</span>` : `<span class="badge ok">guarded → ${esc(guard.baseline)}</span>`);
  if (rollout) badges.push(`<span class="badge">rollout</span>`);
  let html = `<div class="card${r.tripped ? " tripped" : ""}" data-route="${esc(r.name)}">
    <div class="head"><h2>${esc(r.name)}</h2><span class="where">${esc(r.host || "any host")}${esc(r.path_prefix)}</span>${badges.join("")}
      <span class="grow"></span>
      ${guard ? `<button class="danger" data-action="rollback" data-route="${esc(r.name)}">Roll back</button>
      <button data-action="reset" data-route="${esc(r.name)}">Reset</button>` : ""}
      ${rollout ? `<button data-action="promote" data-route="${esc(r.name)}">Promote</button>` : ""}
    </div>
    <div class="splits"><span>configured</span>${bar(r.configured)}<span>effective</span>${bar(r.effective)}</div>`;
  if (rollout) {
    const last = rollout.step + 1 === rollout.steps.length;
    let next = last ? "last step reached" : "";
    if (!last && rollout.since) {
      const left = Date.parse(rollout.since) / 1000 + rollout.every_s - now / 1000;
      next = left > 0 ? `next step (${rollout.steps[rollout.step + 1]}%) in ${dur(left)}` : `next step (${rollout.steps[rollout.step + 1]}%) when the guard passes`;
    }
    if (r.tripped && rollout.since == null) next = "aborted";
    html += `<div class="rollout" data-rollout>rollout of <b>${esc(rollout.pool)}</b>: step ${rollout.step + 1} of ${rollout.steps.length} (${rollout.percent}%) · ${esc(next)}
      <div class="progress"><span style="width:${((rollout.step + 1) / rollout.steps.length) * 100}%"></span></div></div>`;
  }
  if (r.trips.length) {
    html += `<div class="trips">${r.trips.map((t) => `<div class="trip"><b>${esc(t.pool)}</b> ${t.manual ? "rolled back" : "tripped"} ${esc(ago(t.at))}: ${esc(t.reason)}${t.manual ? "" : ` <span class="muted">(${t.requests} requests, ${t.errors} errors${t.p99_ms != null ? ", p99 " + ms(t.p99_ms) : ""})</span>`}</div>`).join("")}</div>`;
  }
  const reports = new Map((guard ? guard.pools : []).map((p) => [p.pool, p]));
  html += `<div class="pools">`;
  for (const s of r.configured) {
    const f = latest(r.name, s.pool, now), rep = reports.get(s.pool);
    let window = "";
    if (rep) {
      const v = rep.verdict ? rep.verdict.verdict : "baseline";
      const cls = v === "fail" ? "fail" : "";
      window = `<div class="window">${rep.tripped ? "at the trip, guard window" : "guard window"} ${dur(guard.window_s)}: ${rep.figures.requests} req, ${rep.figures.errors} err, p50 ${ms(rep.figures.p50)}, p99 ${ms(rep.figures.p99)} · <span class="${cls}" data-verdict>${esc(v)}</span>${rep.verdict && rep.verdict.reason ? ": " + esc(rep.verdict.reason) : ""}</div>`;
    }
    const eff = (r.effective.find((e) => e.pool === s.pool) || { share: 0 }).share;
    html += `<div class="pool" data-pool="${esc(s.pool)}"><h3><i style="background:${color(s.pool)}"></i>${esc(s.pool)} <span class="muted" style="font-weight:400">${pct(eff, 1)} of users</span></h3>
      <div class="figs"><div>req/s<b class="rps">${f.rps.toFixed(f.rps < 10 ? 1 : 0)}</b></div><div>errors<b class="errors">${f.errorRate == null ? "–" : pct(f.errorRate, 2)}</b></div>
      <div>p50<b class="p50">${ms(f.p50)}</b></div><div>p99<b class="p99">${ms(f.p99)}</b></div></div>${window}
      <div class="charts">${spark(r.name, s.pool, (x) => x.requests / intervalS, now, (v) => v.toFixed(0) + "/s", "req/s")}
      ${spark(r.name, s.pool, (x) => x.errors / x.requests, now, (v) => pct(v, 1), "errors")}
      ${spark(r.name, s.pool, (x) => x.p99_ms, now, ms, "p99")}</div></div>`;
  }
  return html + `</div></div>`;
}

function render() {
  const { routes, total, pools, flags, config, fleet, now } = data;
  $("revision").textContent = `revision ${config.revision} · loaded ${ago(config.loaded_at)}` +
    (fleet.prometheus && fleet.up ? ` · fleet of ${fleet.replicas}` : "");
  const lr = config.last_reload;
  $("reload").textContent = lr ? `last reload: ${lr.result}, ${ago(lr.at)}` : "";
  const banners = [];
  if (config.last_error && (!lr || lr.result === "error")) banners.push(`the last config reload failed ${esc(ago(config.last_error.at))}; the proxy serves revision ${esc(config.revision)}:<pre style="margin:6px 0 0;white-space:pre-wrap">${esc(config.last_error.error || "")}</pre>`);
  if (fleet.prometheus && fleet.up === false) banners.push(`the fleet's Prometheus (${esc(fleet.prometheus)}) does not answer: ${esc(fleet.error || "")}; judging this replica's numbers only`);
  if (config.state && config.state.save_error) banners.push(`the state file could not be saved: ${esc(config.state.save_error.error)}`);
  if (config.state && config.state.load_error) banners.push(`the state file could not be read at start: ${esc(config.state.load_error.error)}`);
  $("banners").innerHTML = banners.map((b) => `<div class="banner">${b}</div>`).join("");
  // The admin API sent the filter's routes, tripped first, SHOWN at most.
  $("count").textContent = total > routes.length ? `${routes.length} of ${total} shown` : `${routes.length} route${routes.length === 1 ? "" : "s"}`;
  $("routes").innerHTML = routes.map((r) => routeCard(r, now)).join("");
  $("flags").innerHTML = flags.length ? `<table><tr><th>flag</th><th>decisions</th><th></th></tr>${flags.map((f) => {
    const total = f.decisions.reduce((a, [, n]) => a + n, 0);
    const parts = f.decisions.filter(([, n]) => n > 0);
    return `<tr data-flag="${esc(f.name)}"><td>${esc(f.name)}</td><td class="num">${total}</td><td><div class="share">${parts.map(([v, n], i) =>
      `<span style="width:${(n / total) * 100}%;background:var(--p${v === "off" ? 5 : i % 5})" title="${esc(v)} ${pct(n / total)}"></span>`).join("")}</div>
      <span class="muted">${parts.map(([v, n]) => `${esc(v)} ${pct(n / total)}`).join(" · ") || "no decisions yet"}</span></td></tr>`;
  }).join("")}</table>` : `<span class="muted">no flags</span>`;
  $("endpoints").innerHTML = `<table><tr><th>pool</th><th>endpoint</th><th>state</th><th>in flight</th></tr>${pools.flatMap((p) => p.endpoints.map((e) =>
    `<tr><td>${esc(p.name)}</td><td>${esc(e.address)}</td><td class="${e.available ? "up" : "down"}">${e.available ? "up" : e.ejected_for_s != null ? `ejected (${dur(e.ejected_for_s)} left)` : "failing checks"}</td><td class="num">${e.in_flight}</td></tr>`)).join("")}</table>`;
}

async function act(action, route) {
  const token = $("token").value.trim();
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await api(`/api/routes/${encodeURIComponent(route)}/${action}`, { method: "POST", headers });
  // A command's result names its route already ("web: 1 trip(s) cleared").
  const msg = r.ok ? r.body.result : r.status === 401 ? `refused: ${r.body && r.body.error} — enter the token above` : `${route}: ${(r.body && r.body.error) || "HTTP " + r.status}`;
  $("message").innerHTML = `<div class="${r.ok ? "ok" : "error"}" data-status="${r.status}">${esc(msg)}</div>`;
  if (r.status === 401) $("token").focus();
  poll();
}

document.addEventListener("click", (e) => {
  const b = e.target.closest("button[data-action]");
  if (!b) return;
  const { action, route } = b.dataset;
  // Every change of state asks first.
  const ask = {
    rollback: `Send every user of ${route} to its baseline?`,
    reset: `Clear the trips of ${route} (its users go back to the split; a rollout starts again from its first step)?`,
    promote: `Move ${route}'s rollout on to its next step?`,
  }[action];
  if (ask && !confirm(ask)) return;
  act(action, route);
});
$("filter").addEventListener("input", () => poll());
poll();
setInterval(poll, POLL_MS);

// The token form never submits (it only holds the token for the buttons).
document.getElementById("auth").addEventListener("submit", (e) => e.preventDefault());
