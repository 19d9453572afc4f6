"""The JavaScript and CSS of :func:`attnlens.render.notebook.map_view` (kept as strings so they ship
inside the package; no CDN, no server, no plotly).

The script reads the view's JSON from ``<script type="application/json" class="al-data">`` inside the
view's root element (found by id), builds the word buttons and the layer/head/alternative selectors
with ``textContent`` (it never writes HTML), and paints the selected word's heat on a canvas with the
rules of :func:`attnlens.render.overlay.overlay`: region boxes by the pixel-centre rule (the
largest weight wins where boxes overlap, 0 where none covers), patch grids as uniform blocks, the
colour from the same 256-entry RGB table, opacity ``alpha * t`` with ``t`` the colour's position
in the table (:func:`attnlens.render.heatmap.opacity_table`), so zero heat shows the bare image pixel. It records its state in ``data-attnlens-state="<combo>,<word>"``.
"""

CSS = """
#__ID__ { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 13px; color: #1f2328;
          max-width: 100%; }
#__ID__ .al-title { font-weight: 600; margin: 2px 0 6px; overflow-wrap: anywhere; }
#__ID__ .al-controls { display: flex; flex-wrap: wrap; gap: 6px 12px; margin-bottom: 6px; }
#__ID__ .al-controls label { display: inline-flex; gap: 4px; align-items: center; }
#__ID__ .al-words { display: flex; flex-wrap: wrap; gap: 3px; margin-bottom: 8px; }
#__ID__ .al-words button { font: inherit; padding: 1px 6px; border: 1px solid #d0d7de; border-radius: 4px;
          background: #f6f8fa; cursor: pointer; color: #1f2328; }
#__ID__ .al-words button.on { background: #0969da; border-color: #0969da; color: #fff; }
#__ID__ .al-stage { display: flex; align-items: stretch; gap: 8px; max-width: 100%; }
#__ID__ canvas.al-canvas { max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid #d0d7de; }
#__ID__ .al-cbar { display: flex; gap: 4px; }
#__ID__ canvas.al-cbar-canvas { width: 12px; height: 100%; min-height: 60px; }
#__ID__ .al-ticks { display: flex; flex-direction: column; justify-content: space-between; font-size: 11px; }
#__ID__ .al-bars div { display: flex; gap: 6px; align-items: center; font-size: 12px; }
#__ID__ .al-bars span.b { display: inline-block; height: 10px; }
#__ID__ .al-status { font-size: 12px; color: #57606a; margin-top: 4px; overflow-wrap: anywhere; }
"""

SCRIPT = r"""
(function () {
  var root = document.getElementById('__ID__');
  if (!root || root.getAttribute('data-attnlens-ready')) { return; }
  var D = JSON.parse(root.querySelector('.al-data').textContent);
  var S = {word: 0, sel: D.dims.map(function () { return 0; })};
  var live = root.querySelector('.al-live'), still = root.querySelector('.al-static');
  var canvas = root.querySelector('canvas.al-canvas'), bars = root.querySelector('.al-bars');
  var status = root.querySelector('.al-status'), img = null, buttons = [];

  function clampi(v, lo, hi) { return Math.max(lo, Math.min(hi, v)); }
  function combo() {
    var c = 0;
    for (var i = 0; i < D.dims.length; i++) { c = c * D.dims[i].labels.length + S.sel[i]; }
    return c;
  }
  function index(v, lo, hi) {  // colour-table index of a value (as color_index in Python)
    if (v === null || isNaN(v)) { return -1; }
    if (D.signed) {
      var m = Math.max(Math.abs(lo), Math.abs(hi));
      return m > 0 ? 128 + Math.round(127 * clampi(v / m, -1, 1)) : 128;
    }
    return hi > lo ? Math.round(255 * clampi((v - lo) / (hi - lo), 0, 1)) : 0;
  }
  function opacity(i) {  // the opacity of colour-table index i (as opacity_table in Python)
    if (i < 0) { return 0; }
    return D.signed ? Math.min(1, Math.abs(i - 128) / 127) : i / 255;
  }
  function pixels(w) {  // the pixel map of one word: [H * W] floats (as regions_to_pixels / grid_to_pixels)
    var H = D.size[0], W = D.size[1], out = new Float32Array(H * W), r, x, y;
    if (D.kind === 'regions') {
      out.fill(NaN);  // no box covers the pixel: nothing to show (the bare image, or white)
      var cover = new Uint8Array(H * W);
      for (r = 0; r < D.boxes.length; r++) {
        var b = D.boxes[r], v = w[r];
        if (v === null) { continue; }
        var c0 = clampi(Math.ceil(b[0] - 0.5), 0, W), c1 = clampi(Math.ceil(b[2] - 0.5), 0, W);
        var r0 = clampi(Math.ceil(b[1] - 0.5), 0, H), r1 = clampi(Math.ceil(b[3] - 0.5), 0, H);
        for (y = r0; y < r1; y++) {
          for (x = c0; x < c1; x++) {
            var k = y * W + x;
            if (!cover[k] || v > out[k]) { out[k] = v; cover[k] = 1; }  // the largest weight wins
          }
        }
      }
    } else if (D.kind === 'grid') {
      var rows = D.grid[0], cols = D.grid[1];
      for (y = 0; y < H; y++) {
        var ri = Math.floor((y * rows) / H);
        for (x = 0; x < W; x++) {
          var v2 = w[ri * cols + Math.floor((x * cols) / W)];
          out[y * W + x] = v2 === null ? NaN : v2;
        }
      }
    }
    return out;
  }
  function paint() {
    var c = combo(), w = D.maps[c][S.word], lim = D.lims[c], lo = lim[0], hi = lim[1];
    if (canvas) {
      var H = D.size[0], W = D.size[1], ctx = canvas.getContext('2d', {willReadFrequently: true});
      ctx.clearRect(0, 0, W, H);
      if (img) { ctx.drawImage(img, 0, 0); } else { ctx.fillStyle = '#ffffff'; ctx.fillRect(0, 0, W, H); }
      var data = ctx.getImageData(0, 0, W, H), px = data.data, heat = pixels(w);
      for (var k = 0; k < H * W; k++) {
        var i = index(heat[k], lo, hi);
        if (i < 0) { continue; }
        var a = D.opacity === 'heat' ? D.alpha * opacity(i) : D.alpha, col = D.lut[i];
        for (var ch = 0; ch < 3; ch++) {
          var base = px[4 * k + ch];
          px[4 * k + ch] = Math.round(base + (col[ch] - base) * a);
        }
        px[4 * k + 3] = 255;
      }
      ctx.putImageData(data, 0, 0);
      ctx.lineWidth = Math.max(1, Math.round(Math.max(H, W) / 160));
      var gt = D.gt && D.gt[S.word];
      if (gt) {
        ctx.strokeStyle = 'rgb(255,40,40)';
        for (var g = 0; g < gt.length; g++) { ctx.strokeRect(gt[g][0], gt[g][1], gt[g][2] - gt[g][0], gt[g][3] - gt[g][1]); }
      }
    }
    if (bars) {
      while (bars.firstChild) { bars.removeChild(bars.firstChild); }
      var m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
      for (var r = 0; r < w.length; r++) {
        var row = document.createElement('div'), name = document.createElement('span');
        var bar = document.createElement('span'), val = document.createElement('span');
        name.textContent = D.keys[r];
        bar.className = 'b';
        var idx = index(w[r], lo, hi);
        bar.style.width = (w[r] === null ? 0 : Math.round(120 * Math.abs(w[r]) / m)) + 'px';
        bar.style.background = idx < 0 ? 'transparent' : 'rgb(' + D.lut[idx].join(',') + ')';
        val.textContent = w[r] === null ? 'n/a' : Number(w[r]).toPrecision(3);
        row.appendChild(name); row.appendChild(bar); row.appendChild(val);
        bars.appendChild(row);
      }
    }
    for (var j = 0; j < buttons.length; j++) { buttons[j].className = j === S.word ? 'on' : ''; }
    var ticks = root.querySelectorAll('.al-ticks span');
    if (ticks.length === 3) {
      ticks[0].textContent = Number(hi).toPrecision(3);
      ticks[1].textContent = Number((lo + hi) / 2).toPrecision(3);
      ticks[2].textContent = Number(lo).toPrecision(3);
    }
    var sel = D.dims.map(function (d, i) { return d.name + '=' + d.labels[S.sel[i]]; });
    status.textContent = 'word ' + JSON.stringify(D.words[S.word]) + (sel.length ? ' | ' + sel.join(', ') : '') +
      ' | scale [' + Number(lo).toPrecision(3) + ', ' + Number(hi).toPrecision(3) + ']';
    root.setAttribute('data-attnlens-state', c + ',' + S.word);
  }
  function colourbar() {
    var cb = root.querySelector('canvas.al-cbar-canvas');
    if (!cb) { return; }
    var ctx = cb.getContext('2d'), n = cb.height;
    for (var y = 0; y < n; y++) {
      var t = 1 - y / Math.max(1, n - 1);
      var i = D.signed ? 1 + Math.round(254 * t) : Math.round(255 * t);
      ctx.fillStyle = 'rgb(' + D.lut[i].join(',') + ')';
      ctx.fillRect(0, y, cb.width, 1);
    }
  }
  var wordsBox = root.querySelector('.al-words');
  D.words.forEach(function (word, j) {
    var b = document.createElement('button');
    b.type = 'button';
    b.textContent = word;
    b.setAttribute('data-word', String(j));
    b.addEventListener('click', function () { S.word = j; paint(); });
    wordsBox.appendChild(b);
    buttons.push(b);
  });
  var controls = root.querySelector('.al-controls');
  D.dims.forEach(function (d, i) {
    var label = document.createElement('label'), s = document.createElement('select');
    label.textContent = d.name + ' ';
    s.setAttribute('data-dim', d.name);
    d.labels.forEach(function (l, k) {
      var o = document.createElement('option');
      o.value = String(k);
      o.textContent = l;
      s.appendChild(o);
    });
    s.addEventListener('change', function () { S.sel[i] = parseInt(s.value, 10) || 0; paint(); });
    label.appendChild(s);
    controls.appendChild(label);
  });
  function start() {
    if (still) { still.style.display = 'none'; }
    live.style.display = '';
    colourbar();
    paint();
    root.setAttribute('data-attnlens-ready', '1');
  }
  if (canvas) { canvas.width = D.size[1]; canvas.height = D.size[0]; canvas.style.width = D.display[1] + 'px'; }
  if (D.image && canvas) {
    img = new Image();
    img.onload = start;
    img.onerror = function () { img = null; start(); };
    img.src = D.image;
  } else { start(); }
})();
"""
