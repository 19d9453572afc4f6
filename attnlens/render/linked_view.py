"""The JavaScript that links the panels of :func:`attnlens.render.interactive.interactive`.

Kept as a Python string so it ships inside the package. ``__ATTNLENS_DATA__`` is replaced by the
view's JSON (with ``<``, ``>`` and ``&`` escaped); plotly replaces ``{plot_id}`` by the div id.
The script only reads strings that were HTML-escaped in Python and hands them to plotly, which
renders them as text; it never writes HTML itself.
"""

SCRIPT = r"""
(function () {
  var D = __ATTNLENS_DATA__;
  var gd = document.getElementById('{plot_id}');
  var BAR = 0, HEAT = 2;
  var S = {alt: 0, word: 0, region: -1};

  function color(v, lo, hi) {
    if (D.signed) {
      var m = Math.max(Math.abs(lo), Math.abs(hi));
      return D.colors[m > 0 ? 128 + Math.floor(127 * Math.max(-1, Math.min(1, v / m)) + 0.5) : 128];
    }
    var t = hi > lo ? (v - lo) / (hi - lo) : 0;
    t = Math.max(0, Math.min(1, t));
    return D.colors[Math.round(t * 255)];
  }
  function barValues() {
    if (S.region >= 0 && D.weights) {
      return D.weights[S.alt].map(function (row) { return row[S.region]; });
    }
    return D.bars[S.alt];
  }
  function topRegions() {
    if (!D.weights || !D.top_k) { return []; }
    var w = D.weights[S.alt][S.word].map(function (v, i) { return [v, i]; });
    w.sort(function (a, b) { return (b[0] - a[0]) || (a[1] - b[1]); });
    return w.slice(0, D.top_k).map(function (p) { return p[1]; });
  }
  function rect(r, col, dash, width) {
    var b = D.boxes[r];
    return {type: 'rect', xref: 'x2', yref: 'y2', x0: b[0], y0: b[1], x1: b[2], y1: b[3],
            line: {color: col, width: width, dash: dash}};
  }
  function pick(u, v) {
    var best = -1, area = Infinity;
    for (var r = 0; r < D.boxes.length; r++) {
      var b = D.boxes[r];
      if (b[0] <= u && u < b[2] && b[1] <= v && v < b[3]) {
        var a = (b[2] - b[0]) * (b[3] - b[1]);
        if (a < area) { best = r; area = a; }
      }
    }
    return best;
  }
  function render() {
    var vals = barValues();
    var lo = Math.min(0, Math.min.apply(null, vals)), hi = Math.max.apply(null, vals);
    var hover = vals.map(function (v, i) { return D.words[i] + ': ' + Number(v).toPrecision(4); });
    var lim = D.zlim[S.alt][S.word];
    var shapes = topRegions().map(function (r) { return rect(r, 'white', 'dot', 2); });
    if (S.region >= 0) { shapes.push(rect(S.region, '#d62728', 'solid', 3)); }
    var t = D.title + ': ' + D.words[S.word] + ' (' + D.alts[S.alt] + ')';
    if (S.region >= 0) { t += ' | bars: attention to region ' + D.keys[S.region]; }
    var lay = {shapes: shapes, 'title.text': t};
    if (gd.layout.sliders && gd.layout.sliders.length) { lay['sliders[0].active'] = S.word; }
    if (gd.layout.updatemenus && gd.layout.updatemenus.length) { lay['updatemenus[0].active'] = S.alt; }
    var state = S.alt + ',' + S.word + ',' + S.region;
    return Plotly.restyle(gd, {
      y: [vals], hovertext: [hover],
      'marker.color': [vals.map(function (v) { return color(v, lo, hi); })],
      'marker.line.width': [vals.map(function (v, i) { return i === S.word ? 3 : 0; })],
      'marker.line.color': ['#d62728']
    }, [BAR]).then(function () {
      return Plotly.restyle(gd, {z: [D.z[S.alt][S.word]], zmin: [lim[0]], zmax: [lim[1]]}, [HEAT]);
    }).then(function () {
      return Plotly.relayout(gd, lay);
    }).then(function () {
      gd.setAttribute('data-attnlens-state', state);
      gd.setAttribute('data-attnlens-errors', JSON.stringify(window.__attnlensErrors || []));
    });
  }
  function clamp(x, n) { x = parseInt(x, 10); return (isNaN(x) || x < 0 || x >= n) ? null : x; }

  gd.on('plotly_click', function (ev) {
    var p = ev && ev.points && ev.points[0];
    if (!p) { return; }
    if (p.curveNumber === BAR) { S.word = p.pointIndex; render(); return; }
    var u, v;
    if (p.curveNumber === HEAT && Array.isArray(p.pointIndex)) {
      v = D.ye[p.pointIndex[0]]; u = D.xe[p.pointIndex[1]];
    } else { u = Math.floor(p.x); v = Math.floor(p.y); }
    var r = pick(u, v);
    S.region = (r === S.region) ? -1 : r;
    render();
  });
  gd.on('plotly_hover', function (ev) {
    var p = ev && ev.points && ev.points[0];
    if (p && p.curveNumber === BAR && p.pointIndex !== S.word) { S.word = p.pointIndex; render(); }
  });
  gd.on('plotly_buttonclicked', function (ev) {
    if (ev && typeof ev.active === 'number' && ev.active !== S.alt) { S.alt = ev.active; render(); }
  });
  gd.on('plotly_sliderchange', function (ev) {
    var i = ev && ev.slider ? ev.slider.active : null;
    if (typeof i === 'number' && i !== S.word) { S.word = i; render(); }
  });

  var hash = (window.location.hash || '').replace(/^#/, '').split('&');
  for (var k = 0; k < hash.length; k++) {
    var kv = hash[k].split('=');
    if (kv[0] === 'word') { var w = clamp(kv[1], D.words.length); if (w !== null) { S.word = w; } }
    if (kv[0] === 'alt') { var a = clamp(kv[1], D.alts.length); if (a !== null) { S.alt = a; } }
    if (kv[0] === 'region') { var r = clamp(kv[1], D.boxes.length); if (r !== null) { S.region = r; } }
  }
  return render().then(function () { gd.setAttribute('data-attnlens-ready', '1'); });
})();
"""
