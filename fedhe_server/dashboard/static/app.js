// FedHE dashboard: polls api/state and draws tables and inline SVG charts.
// Everything shown is set with textContent or SVG attributes (no HTML from data).
"use strict";
(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const STEP_COLORS = {
    train_s: "#1f77b4", encrypt_s: "#ff7f0e", upload_s: "#2ca02c",
    aggregate_s: "#d62728", download_s: "#9467bd", decrypt_s: "#8c564b",
  };
  let selectedJob = null;
  let pollMs = 3000;
  let timer = null;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function row(cells, attrs) {
    const tr = el("tr", attrs);
    for (const c of cells) {
      const td = el("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c;
      tr.appendChild(td);
    }
    return tr;
  }

  function bytes(n) {
    if (!n) return "0 B";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function ago(ms, now) {
    if (!ms) return "never";
    const s = Math.max(0, Math.round((now - ms) / 1000));
    if (s < 90) return s + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  function num(v, digits) {
    return v === undefined || v === null ? "–" : Number(v).toFixed(digits);
  }

  function renderDevices(devices, now) {
    const rows = devices.map((d) => {
      const badge = el("span", { class: "badge " + (d.online ? "online" : "offline") },
        d.online ? "online" : "offline");
      const h = d.host;
      let gpu = "–";
      if (h && h.gpu) {
        gpu = h.gpu.name + " " + bytes(h.gpu.memory_used_bytes) + " / " +
          bytes(h.gpu.memory_total_bytes);
        if (h.gpu.utilization_percent !== null) gpu += " · " + num(h.gpu.utilization_percent, 0) + " %";
      }
      return row([
        d.client_id, badge, ago(d.last_seen_unix_ms, now),
        h ? num(h.cpu_percent, 0) + " %" : "–",
        h ? bytes(h.ram_used_bytes) + " / " + bytes(h.ram_total_bytes) : "–",
        gpu, d.last_job,
      ], { "data-device": d.client_id, "data-online": d.online,
        "data-cpu-percent": h ? h.cpu_percent : "" });
    });
    document.getElementById("device-rows").replaceChildren(...rows);
  }

  function renderJobs(jobs, shown) {
    const rows = jobs.map((j) => {
      const bar = el("span");
      bar.appendChild(el("progress", { max: j.rounds, value: j.published }));
      bar.appendChild(document.createTextNode(" " + j.published + "/" + j.rounds));
      const tr = row([j.job_id, j.state, bar, j.open_round === null ? "–" : j.open_round, j.clients],
        { "data-job": j.job_id, "data-state": j.state, "data-progress": j.progress,
          "data-selected": j.job_id === shown });
      tr.addEventListener("click", () => { selectedJob = j.job_id; pollNow(); });
      return tr;
    });
    document.getElementById("job-rows").replaceChildren(...rows);
  }

  function lineChart(id, name, rounds, color) {
    const W = 380, H = 190, L = 48, R = 12, T = 22, B = 28;
    const pts = rounds.filter((r) => r.round >= 1 && r.metrics[name] !== undefined)
      .map((r) => [r.round, r.metrics[name]]);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H,
      "data-chart": name, "data-points": pts.length });
    root.appendChild(svg("text", { x: L, y: 14 }, name + " per round"));
    root.appendChild(svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B,
      fill: "none", stroke: "#ccc" }));
    if (!pts.length) {
      root.appendChild(svg("text", { x: L + 10, y: H / 2 }, "no rounds reported yet"));
    } else {
      const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
      const x0 = Math.min(...xs), x1 = Math.max(...xs);
      let y0 = Math.min(...ys), y1 = Math.max(...ys);
      if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
      const sx = (x) => L + (x1 === x0 ? (W - L - R) / 2 : (x - x0) / (x1 - x0) * (W - L - R));
      const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
      root.appendChild(svg("polyline", { fill: "none", stroke: color, "stroke-width": 2,
        points: pts.map((p) => sx(p[0]) + "," + sy(p[1])).join(" ") }));
      for (const p of pts) {
        const dot = svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: color,
          "data-round": p[0], "data-value": p[1] });
        dot.appendChild(svg("title", {}, "round " + p[0] + ": " + num(p[1], 4)));
        root.appendChild(dot);
      }
      root.appendChild(svg("text", { x: 2, y: T + 8 }, num(y1, 3)));
      root.appendChild(svg("text", { x: 2, y: H - B }, num(y0, 3)));
      root.appendChild(svg("text", { x: L, y: H - 10 }, "round " + x0));
      root.appendChild(svg("text", { x: W - R - 50, y: H - 10 }, "round " + x1));
    }
    document.getElementById(id).replaceChildren(root);
  }

  function overheadChart(over) {
    const box = document.getElementById("overhead");
    const label = document.getElementById("overhead-round");
    if (!over) {
      box.removeAttribute("data-round");
      label.textContent = "";
      box.replaceChildren(el("p", { class: "muted" }, "no per-step times reported yet"));
      return;
    }
    box.setAttribute("data-round", over.round);
    label.textContent = "(round " + over.round + ", seconds)";
    const W = 760, L = 110, R = 70, BAR = 22, GAP = 8, TOP = 26;
    const totals = over.clients.map((c) => over.steps.reduce((a, s) => a + c.steps[s], 0));
    const max = Math.max(1e-9, ...totals);
    const H = TOP + over.clients.length * (BAR + GAP) + 4;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H,
      "data-chart": "overhead" });
    let lx = L;
    for (const s of over.steps) {  // legend
      root.appendChild(svg("rect", { x: lx, y: 4, width: 10, height: 10, fill: STEP_COLORS[s] }));
      root.appendChild(svg("text", { x: lx + 14, y: 13 }, s.replace(/_s$/, "")));
      lx += 95;
    }
    over.clients.forEach((c, i) => {
      const y = TOP + i * (BAR + GAP);
      const g = svg("g", { "data-overhead-client": c.client_id, "data-total": totals[i] });
      g.appendChild(svg("text", { x: 4, y: y + BAR * 0.7 }, c.client_id));
      let x = L;
      for (const s of over.steps) {
        const w = c.steps[s] / max * (W - L - R);
        const rect = svg("rect", { x: x, y: y, width: Math.max(0, w), height: BAR,
          fill: STEP_COLORS[s], "data-step": s, "data-seconds": c.steps[s] });
        rect.appendChild(svg("title", {}, s + ": " + num(c.steps[s], 3) + " s"));
        g.appendChild(rect);
        x += w;
      }
      g.appendChild(svg("text", { x: x + 6, y: y + BAR * 0.7 }, num(totals[i], 2) + " s"));
      root.appendChild(g);
    });
    box.replaceChildren(root);
  }

  function renderJob(job, now) {
    document.getElementById("job-name").textContent = job ? job.job_id : "–";
    const section = document.getElementById("job");
    if (job) section.setAttribute("data-job", job.job_id); else section.removeAttribute("data-job");
    const rounds = job ? job.rounds : [];
    lineChart("chart-accuracy", "accuracy", rounds, "#1f77b4");
    lineChart("chart-loss", "loss", rounds, "#ff7f0e");
    overheadChart(job ? job.overhead : null);
    const rows = rounds.slice().reverse().map((r) => row([
      r.round, r.state, r.contributors, num(r.seconds, 1), bytes(r.upload_bytes),
      num(r.metrics.accuracy, 4), num(r.metrics.loss, 4),
    ], { "data-round": r.round, "data-state": r.state }));
    document.getElementById("round-rows").replaceChildren(...rows);
    const errors = (job ? job.errors : []).map((e) => el("li", { "data-client": e.client_id },
      e.client_id + " (round " + e.round + ", " + e.phase + ", " + e.count + "×, " +
      ago(e.unix_ms, now) + "): " + e.message));
    if (!errors.length) errors.push(el("li", { class: "muted" }, "none"));
    document.getElementById("errors").replaceChildren(...errors);
  }

  function setStatus(state, text) {
    const s = document.getElementById("status");
    s.setAttribute("data-state", state);
    s.textContent = text;
  }

  async function poll() {
    try {
      const q = selectedJob ? "?job=" + encodeURIComponent(selectedJob) : "";
      const reply = await fetch("api/state" + q, { credentials: "same-origin", cache: "no-store" });
      if (!reply.ok) throw new Error("server answered HTTP " + reply.status);
      const state = await reply.json();
      const now = state.server_time_unix_ms;
      renderDevices(state.devices, now);
      renderJobs(state.jobs, state.job ? state.job.job_id : null);
      renderJob(state.job, now);
      setStatus("ok", "updated " + new Date(now).toLocaleTimeString());
      pollMs = Math.max(500, state.poll_interval_s * 1000);
    } catch (err) {
      setStatus("error", String(err && err.message ? err.message : err));
    }
    timer = setTimeout(poll, pollMs);
  }

  function pollNow() {
    if (timer !== null) clearTimeout(timer);
    poll();
  }

  pollNow();
})();
