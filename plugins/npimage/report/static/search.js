/* npimage review report: search box over image ids, product ids and references.
 *
 * Pages opened from disk (file://) cannot fetch() JSON, so the index is split into small
 * scripts that call NPR.manifest(...) and NPR.shard(...). The manifest lists each shard's
 * key prefix; a query loads only the shards its prefix needs. Keys are compared after
 * NFKC normalisation and lower-casing, exactly as search.py builds them. Results are
 * inserted with textContent, never as HTML. Every page has <base href> at the report
 * root, so the paths in the index are used as they are.
 */
(function () {
  "use strict";
  var input = document.getElementById("q");
  var box = document.getElementById("results");
  if (!input || !box) { return; }
  var KINDS = { i: "image", p: "product", r: "reference" };
  var ORDER = { i: 0, p: 1, r: 2 };
  var MAX_SHARDS = 12;
  var MAX_SHOWN = 40;
  var manifest = null;
  var manifestAsked = false;
  var shards = {};      // file -> entries
  var requested = {};   // file -> true once a <script> was added
  var failed = false;
  var selected = -1;
  var timer = null;

  function norm(text) { return text.normalize("NFKC").toLowerCase(); }

  function addScript(file) {
    var tag = document.createElement("script");
    tag.src = "search/" + file;  // relative to the page's <base>: the report root
    tag.onerror = function () { failed = true; update(); };
    document.head.appendChild(tag);
  }

  window.NPR = {
    manifest: function (rows) { manifest = rows; update(); },
    shard: function (file, rows) {
      shards[file] = rows.map(function (r) {
        return { label: r[0], kind: r[1], href: r[2], note: r[3], key: norm(r[0]) };
      });
      update();
    }
  };

  function message(text) {
    box.textContent = "";
    var p = document.createElement("p");
    p.textContent = text;
    box.appendChild(p);
    box.hidden = false;
  }

  function relevant(q) {
    return manifest.filter(function (m) {
      var prefix = m[0];
      return m[1] ? prefix.indexOf(q) === 0 : (q.indexOf(prefix) === 0 || prefix.indexOf(q) === 0);
    });
  }

  function show(hits, q) {
    box.textContent = "";
    selected = -1;
    if (!hits.length) {
      message("No image, product or reference starts with \u201c" + input.value.trim() + "\u201d.");
      return;
    }
    hits.slice(0, MAX_SHOWN).forEach(function (h) {
      var a = document.createElement("a");
      a.href = h.href;
      var kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = KINDS[h.kind] || h.kind;
      var note = document.createElement("small");
      note.textContent = h.note;
      a.appendChild(kind);
      a.appendChild(document.createTextNode(h.label));
      a.appendChild(note);
      box.appendChild(a);
    });
    if (hits.length > MAX_SHOWN) {
      var more = document.createElement("p");
      more.textContent = (hits.length - MAX_SHOWN) + " more: type more of the id to narrow.";
      box.appendChild(more);
    }
    box.hidden = false;
  }

  function update() {
    var q = norm(input.value.trim());
    if (!q) { box.hidden = true; return; }
    if (failed) { message("The search index could not be loaded (search/ folder missing?)."); return; }
    if (!manifest) {
      if (!manifestAsked) { manifestAsked = true; addScript("manifest.js"); }
      message("Loading the search index\u2026");
      return;
    }
    var wanted = relevant(q);
    if (wanted.length > MAX_SHARDS) {
      message("Many ids start with \u201c" + input.value.trim() + "\u201d: keep typing.");
      return;
    }
    var missing = wanted.filter(function (m) { return !shards[m[2]]; });
    if (missing.length) {
      missing.forEach(function (m) {
        if (!requested[m[2]]) { requested[m[2]] = true; addScript(m[2]); }
      });
      message("Searching\u2026");
      return;
    }
    var hits = [];
    wanted.forEach(function (m) {
      shards[m[2]].forEach(function (e) { if (e.key.indexOf(q) === 0) { hits.push(e); } });
    });
    hits.sort(function (a, b) {
      return (b.key === q) - (a.key === q) || a.key.length - b.key.length ||
        ORDER[a.kind] - ORDER[b.kind] || (a.label < b.label ? -1 : a.label > b.label ? 1 : 0);
    });
    show(hits, q);
  }

  function links() { return box.querySelectorAll("a"); }

  function select(step) {
    var all = links();
    if (!all.length) { return; }
    if (selected >= 0 && all[selected]) { all[selected].classList.remove("sel"); }
    selected = (selected + step + all.length) % all.length;
    all[selected].classList.add("sel");
    all[selected].scrollIntoView({ block: "nearest" });
  }

  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(update, 120);
  });
  input.addEventListener("focus", function () {
    if (!manifestAsked) { manifestAsked = true; addScript("manifest.js"); }
    if (input.value.trim()) { update(); }
  });
  input.addEventListener("keydown", function (ev) {
    if (ev.key === "ArrowDown") { select(1); ev.preventDefault(); }
    else if (ev.key === "ArrowUp") { select(-1); ev.preventDefault(); }
    else if (ev.key === "Escape") { box.hidden = true; }
    else if (ev.key === "Enter") {
      var all = links();
      var target = all[selected >= 0 ? selected : 0];
      if (target) { window.location.href = target.href; }
      ev.preventDefault();
    }
  });
  document.addEventListener("click", function (ev) {
    if (!box.contains(ev.target) && ev.target !== input) { box.hidden = true; }
  });
})();
