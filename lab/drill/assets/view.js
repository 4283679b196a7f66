/* halab drill view: draws a view model (lab/drill/view.py) as lanes.
   The same code draws the offline report (model inlined in #halab-model) and the live
   page (models pushed by the server on /events). Nothing is loaded from elsewhere. */
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var STATE_WORDS = { ok: "OK", fail: "FAILING", slow: "SLOW", none: "no data", info: "" };

  function el(tag, attrs, kids) {
    var n = document.createElement(tag);
    setAttrs(n, attrs);
    (kids || []).forEach(function (k) {
      n.appendChild(typeof k === "string" ? document.createTextNode(k) : k);
    });
    return n;
  }
  function svg(tag, attrs) {
    var n = document.createElementNS(SVGNS, tag);
    setAttrs(n, attrs);
    return n;
  }
  function setAttrs(n, attrs) {
    Object.keys(attrs || {}).forEach(function (k) {
      if (attrs[k] === null || attrs[k] === undefined) return;
      if (k === "text") n.textContent = attrs[k];
      // CSSOM, not a style attribute: the page's Content-Security-Policy allows no inline style
      else if (k === "style" && n.style) n.style.cssText = attrs[k];
      else n.setAttribute(k, attrs[k]);
    });
  }
  function fmt(t) { return (t >= 0 ? "+" : "") + t.toFixed(1) + " s"; }

  function defs() {
    var s = svg("svg", { width: 0, height: 0, style: "position:absolute" });
    var d = svg("defs", {});
    [["hatch-fail", "#D55E00", "#8a3300"], ["hatch-slow", "#E69F00", "#9a6a00"]].forEach(
      function (p) {
        var pat = svg("pattern", { id: p[0], width: 8, height: 8,
                                   patternUnits: "userSpaceOnUse",
                                   patternTransform: "rotate(45)" });
        pat.appendChild(svg("rect", { width: 8, height: 8, fill: p[1] }));
        pat.appendChild(svg("rect", { width: 3, height: 8, fill: p[2] }));
        d.appendChild(pat);
      });
    s.appendChild(d);
    return s;
  }

  function scale(m) {
    var lo = Math.min(m.start, m.fault_band ? m.fault_band[0] : m.start);
    var hi = Math.max(m.end, m.now || m.end, lo + 10);
    if (m.status === "running" && m.duration) {
      hi = Math.max(hi, (m.fault_band ? m.fault_band[0] : 0) + m.duration + 20);
    }
    return { lo: lo, hi: hi, x: function (t) {
      return Math.max(0, Math.min(1000, (t - lo) / (hi - lo) * 1000));
    } };
  }

  function track(m, sc, lane) {
    var s = svg("svg", { "class": "track", viewBox: "0 0 1000 30",
                         preserveAspectRatio: "none", role: "img",
                         "aria-label": lane.label + ": " + (STATE_WORDS[lane.state] || "") });
    (lane.segments || []).forEach(function (g) {
      var x0 = sc.x(g[0]), x1 = sc.x(g[1]);
      var r = svg("rect", { "class": "seg seg-" + g[2], "data-state": g[2], x: x0, y: 4,
                            width: Math.max(0.8, x1 - x0), height: 22 });
      var title = svg("title", { text: lane.label + ": " + g[3] + " from " + fmt(g[0]) +
                                       " to " + fmt(g[1]) });
      r.appendChild(title);
      s.appendChild(r);
    });
    if (m.fault_band) {   // over the segments: a solid strip on top, a veil below it
      var bx = sc.x(m.fault_band[0]);
      var bw = Math.max(1, sc.x(m.fault_band[1]) - bx);
      s.appendChild(svg("rect", { "class": "band", x: bx, y: 4, width: bw, height: 22 }));
      s.appendChild(svg("rect", { "class": "band-strip", x: bx, y: 0, width: bw, height: 4 }));
    }
    (lane.marks || []).forEach(function (mk) {
      var x = sc.x(mk[0]);
      s.appendChild(svg("line", { x1: x, x2: x, y1: 0, y2: 30, stroke: "#111",
                                  "stroke-width": mk[1] === "broken" ? 3 : 1,
                                  "data-mark": mk[1] }));
    });
    (m.markers || []).forEach(function (mk) {
      var x = sc.x(mk.t);
      s.appendChild(svg("line", { "class": "marker " + mk.id, x1: x, x2: x, y1: 0, y2: 30,
                                  "vector-effect": "non-scaling-stroke" }));
    });
    if (m.status === "running") {
      var xn = sc.x(m.now);
      s.appendChild(svg("line", { "class": "nowline", x1: xn, x2: xn, y1: 0, y2: 30,
                                  "vector-effect": "non-scaling-stroke" }));
    }
    return s;
  }

  /* segment labels are HTML on top of the track: SVG text would be stretched */
  function labels(sc, lane) {
    var box = el("div", { style: "position:relative;height:0" });
    (lane.segments || []).forEach(function (g) {
      var w = sc.x(g[1]) - sc.x(g[0]);
      if (w < 60) return;
      var word = g[2] === "info" ? g[3] : (g[2] === "ok" ? (g[3] || "OK") : g[3]);
      box.appendChild(el("span", {
        "class": "seg-text",
        style: "position:absolute;top:calc(var(--lane) * -0.92);left:" + (sc.x(g[0]) / 10) +
               "%;width:" + (w / 10) + "%;overflow:hidden;white-space:nowrap;padding-left:.3em;" +
               "font-size:.62em;font-weight:700;color:" + (g[2] === "none" || g[2] === "slow" ||
               g[2] === "info" ? "#111" : "#fff") + ";pointer-events:none"
      }, [word.length > 28 ? word.slice(0, 28) + "..." : word]));
    });
    return box;
  }

  function laneRow(m, sc, lane) {
    var now = STATE_WORDS[lane.state] || "";
    var row = el("div", { "class": "lane", "data-lane": lane.id, "data-state": lane.state,
                          "data-failed": lane.failed === undefined ? null : String(lane.failed),
                          "data-agree": lane.agree === null || lane.agree === undefined
                            ? null : String(lane.agree) }, [
      el("div", { "class": "name", title: lane.sub || "" }, [
        lane.label, el("span", { "class": "now" }, [now ? " " + now : ""]),
        el("small", {}, [lane.sub || ""])]),
      el("div", {}, [track(m, sc, lane), labels(sc, lane)])
    ]);
    var out = [row];
    if (lane.expect || lane.verdict || lane.measured) {
      var kids = [];
      if (lane.expect) kids.push(el("span", {}, ["predicted: ", el("b", {}, [lane.expect])]));
      if (lane.measured) kids.push(el("span", {}, [(lane.expect ? "; " : "") + "measured: ",
                                                   el("b", {}, [lane.measured])]));
      if (lane.agree !== null && lane.agree !== undefined) {
        kids.push(el("span", { "class": "agree-" + lane.agree },
                     [lane.agree ? "  as expected" : "  DIFFERS: " + (lane.verdict || "")]));
      }
      out.push(el("div", { "class": "expect" }, kids));
    }
    return out;
  }

  function axis(m, sc) {
    var s = svg("svg", { "class": "axis", viewBox: "0 0 1000 20", preserveAspectRatio: "none" });
    var step = (sc.hi - sc.lo) > 120 ? 20 : 10;
    for (var t = Math.ceil(sc.lo / step) * step; t <= sc.hi; t += step) {
      var x = sc.x(t);
      s.appendChild(svg("line", { x1: x, x2: x, y1: 0, y2: 6, stroke: "#777",
                                  "vector-effect": "non-scaling-stroke" }));
    }
    var wrap = el("div", { "class": "lane" }, [el("div", { "class": "name muted" },
                                                   ["s since injection"]), el("div", {}, [s])]);
    var tl = el("div", { style: "position:relative;height:1.1em" });
    for (t = Math.ceil(sc.lo / step) * step; t <= sc.hi; t += step) {
      tl.appendChild(el("span", { "class": "muted",
                                  style: "position:absolute;font-size:.7em;left:" + (sc.x(t) / 10) +
                                         "%;transform:translateX(-50%)" }, [(t > 0 ? "+" : "") + t]));
    }
    wrap.lastChild.appendChild(tl);
    return wrap;
  }

  function markerRow(m, sc) {
    var box = el("div", { "class": "lane", id: "markers" }, [el("div", { "class": "name" },
                                                                ["events"])]);
    var inner = el("div", { style: "position:relative;height:1.4em" });
    var rows = [];   // markers close together go on rows of their own
    (m.markers || []).forEach(function (mk) {
      var x = sc.x(mk.t), row = 0;
      while (rows[row] !== undefined && x - rows[row] < 260) row++;
      rows[row] = x;
      inner.appendChild(el("span", { "data-marker": mk.id, title: mk.label + " " + fmt(mk.t),
                                     style: "position:absolute;left:" + (x / 10) + "%;top:" +
                                            (row * 1.1) + "em;font-size:.7em;font-weight:700;" +
                                            "white-space:nowrap;transform:" +
                                            (x > 780 ? "translateX(calc(8px - 100%))"
                                                     : "translateX(-8px)") },
                                  [x > 780 ? mk.label + " " + fmt(mk.t) + " \u25BC"
                                           : "\u25BC " + mk.label + " " + fmt(mk.t)]));
    });
    var lines = Math.max(1, rows.length);
    inner.style.height = (lines * 0.8 + 0.2) + "em";
    var cell = el("div", {}, [inner]);
    if (m.fault_band) {
      var a = sc.x(m.fault_band[0]) / 10, w = (sc.x(m.fault_band[1]) - sc.x(m.fault_band[0])) / 10;
      cell.appendChild(el("div", { style: "position:relative;height:1.1em" }, [
        el("span", { "class": "band-label", "data-band": "fault",
                     style: "position:absolute;top:0;left:" + a + "%;width:" + w + "%" },
           ["FAULT ACTIVE"])]));
    }
    box.appendChild(cell);
    return box;
  }

  function legend() {
    var items = [["ok", "OK / Ready / UP"], ["fail", "FAILING / DOWN / silent (hatched)"],
                 ["slow", "slow answer / checks failing (hatched)"], ["none", "no data"],
                 ["info", "holder (name written)"]];
    return el("div", { "class": "legend muted" }, items.map(function (it) {
      var sw = el("span", { "class": "swatch", style: "background:" + {
        ok: "#009E73", fail: "repeating-linear-gradient(45deg,#D55E00 0 5px,#8a3300 5px 8px)",
        slow: "repeating-linear-gradient(45deg,#E69F00 0 5px,#9a6a00 5px 8px)",
        none: "#BBBBBB", info: "#56B4E9" }[it[0]] });
      return el("span", {}, [sw, it[1]]);
    }).concat([el("span", {}, ["yellow band: fault active; \u25BC lines: injected, restore, " +
                               "restored, recovered"])]));
  }

  function verdictBox(m) {
    if (!m.verdict) {
      return el("section", { id: "verdict", "data-ok": "pending" }, [
        el("div", { "class": "head" }, [m.status === "running" || m.status === "starting"
          ? "Verdict: at the end of the drill" : "Verdict: none (" + m.status + ")"])]);
    }
    var v = m.verdict;
    var kids = [el("div", { "class": "head" }, [(v.ok ? "\u2714 VERDICT: " : "\u2718 VERDICT: ") +
                                                 v.headline])];
    if (v.reasons && v.reasons.length) {
      kids.push(el("ul", {}, v.reasons.map(function (r) { return el("li", {}, [r]); })));
    }
    (v.why || []).forEach(function (w) { kids.push(el("p", { "class": "muted" }, ["why " + w])); });
    if (v.mechanisms && v.mechanisms.length) {
      kids.push(el("h2", {}, ["Why the errors lasted as long as they did"]));
      var rows = [el("tr", {}, ["mechanism", "predicted", "measured", "", "lab setting"].map(
        function (h) { return el("th", {}, [h]); }))];
      v.mechanisms.forEach(function (mm) {
        rows.push(el("tr", {}, [el("td", {}, [el("b", {}, [mm.name])]),
                                el("td", {}, [mm.predicted]), el("td", {}, [mm.measured]),
                                el("td", { "class": mm.agree === false ? "agree-false" :
                                                    mm.agree ? "agree-true" : "muted" },
                                   [mm.agree === false ? "LATE" : mm.agree ? "as predicted"
                                                                           : "not measured"]),
                                el("td", { "class": "muted" }, [mm.setting])]));
      });
      kids.push(el("table", {}, rows));
    }
    return el("section", { id: "verdict", "data-ok": String(v.ok) }, kids);
  }

  function drill(m, top) {
    var sc = scale(m);
    var state = m.status === "running" || m.status === "starting" ? "live" : "done";
    var out = [el("div", { "class": "bar" }, [
      el(top ? "h1" : "h2", {}, [m.fault + " " + (m.targets || []).join(" ") + " \u2014 lab " +
                                 m.lab + ", Case " + m.case]),
      el("span", { "class": "badge " + state, id: "status", "data-status": m.status },
         [state === "live" ? "LIVE " + (m.injected ? fmt(m.now) : "(steady state)") : m.status])]),
      el("div", { "class": "muted" }, [m.fault_summary + (m.restore_summary ? "; restore: " +
                                                          m.restore_summary : "")])];
    out.push(verdictBox(m));
    out.push(legend());
    out.push(axis(m, sc));
    out.push(markerRow(m, sc));
    (m.groups || []).forEach(function (g) {
      var sec = el("section", { "data-group": g.id }, [el("h2", {}, [g.title])]);
      g.lanes.forEach(function (lane) {
        laneRow(m, sc, lane).forEach(function (n) { sec.appendChild(n); });
      });
      out.push(sec);
    });
    if (m.errors && m.errors.length) {
      out.push(el("h2", {}, ["Errors"]));
      out.push(el("ul", {}, m.errors.map(function (e) { return el("li", {}, [e]); })));
    }
    return el("article", { "class": "drill", "data-id": m.id }, out);
  }

  function runbook(m) {
    var out = [el("h1", {}, ["Runbook " + m.id + " \u2014 lab " + m.lab + ", Case " + m.case])];
    var v = m.verdict || {};
    out.push(el("section", { id: "verdict", "data-ok": String(!!v.ok) }, [
      el("div", { "class": "head" }, [v.ok ? "\u2714 every step as expected"
                                           : "\u2718 some steps differ"])]));
    out.push(el("table", {}, [el("tr", {}, ["#", "fault", "target", "result"].map(
      function (h) { return el("th", {}, [h]); }))].concat((m.steps || []).map(function (s) {
        return el("tr", {}, [String(s.step), s.fault, (s.targets || []).join(" "),
                             s.result].map(function (c) { return el("td", {}, [c || ""]); }));
      }))));
    (m.drills || []).forEach(function (d) { out.push(el("hr", {})); out.push(drill(d, false)); });
    return el("div", {}, out);
  }

  function render(m) {
    var app = document.getElementById("app");
    var scrollY = window.scrollY;
    app.textContent = "";
    app.appendChild(defs());
    app.appendChild(controls());
    app.appendChild(m.kind === "runbook" ? runbook(m) : drill(m, true));
    document.title = (m.kind === "runbook" ? "halab runbook " : "halab drill ") + m.id;
    window.scrollTo(0, scrollY);
    window.halabModel = m;
    document.body.setAttribute("data-rendered", String((window.halabRenders =
                                                        (window.halabRenders || 0) + 1)));
  }

  function controls() {
    var b = el("button", { type: "button", id: "wall" }, [document.body.classList.contains("wall")
      ? "normal layout" : "wall layout (projector)"]);
    b.addEventListener("click", function () {
      document.body.classList.toggle("wall");
      if (window.halabModel) render(window.halabModel);
    });
    return el("div", { "class": "controls muted" }, [b, " (key W)"]);
  }

  document.addEventListener("keydown", function (e) {
    if (e.key === "w" || e.key === "W") {
      document.body.classList.toggle("wall");
      if (window.halabModel) render(window.halabModel);
    }
  });

  function start() {
    var live = document.body.getAttribute("data-live") === "1";
    if (live || /[?&]wall\b/.test(location.search)) document.body.classList.add("wall");
    var inline = document.getElementById("halab-model");
    if (inline) render(JSON.parse(inline.textContent));
    if (!live || !window.EventSource) return;
    var es = new EventSource("/events");
    es.addEventListener("model", function (ev) {
      var m = JSON.parse(ev.data);
      render(m);
      if (m.final) { es.close(); document.body.setAttribute("data-final", "1"); }
    });
    es.onerror = function () {
      document.body.setAttribute("data-connection", "lost");
    };
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
