// npimage review: compare modes, zoom, keyboard, decisions. No framework, no build.
(function () {
  "use strict";
  var pair = document.getElementById("pair");
  if (!pair) return;
  var view = document.getElementById("view");
  var zoom = 0; // 0 = fit to the box; otherwise a scale of the natural size
  var flickerTimer = null;

  function setZoom(z) {
    zoom = z;
    document.getElementById("zoom-level").textContent = z ? Math.round(z * 100) + " %" : "fit";
    view.classList.toggle("zoomed", z > 0);
    Array.prototype.forEach.call(view.querySelectorAll("img.zoomable"), function (img) {
      img.style.width = z ? Math.round(img.naturalWidth * z) + "px" : "";
    });
    // The difference is computed at a common size: show it at the left picture's size.
    var a = document.getElementById("img-a");
    var d = document.getElementById("diff-img");
    var box = d.parentNode.clientWidth || a.naturalWidth;
    d.style.width = a.naturalWidth ? Math.round(z ? a.naturalWidth * z :
                                                Math.min(a.naturalWidth, box)) + "px" : "";
    var inner = view.querySelector(".stack-inner");
    var under = view.querySelector("img.under");
    inner.style.width = z && under.naturalWidth ? Math.round(under.naturalWidth * z) + "px" : "";
  }
  function zoomBy(f) {
    var img = document.getElementById("img-a");
    var box = img.parentNode.clientWidth || 1;
    var current = zoom || Math.min(1, box / (img.naturalWidth || box));
    setZoom(Math.max(0.1, Math.min(16, current * f)));
  }

  function setMode(mode) {
    var radio = document.querySelector("input[name=mode][value=" + mode + "]");
    if (radio) radio.checked = true;
    view.className = "view mode-" + mode + (zoom ? " zoomed" : "");
    view.querySelector(".side").hidden = mode !== "side";
    view.querySelector(".stack").hidden = mode !== "slider" && mode !== "flicker";
    view.querySelector(".diff").hidden = mode !== "diff";
    var over = view.querySelector("img.over");
    var label = view.querySelector(".flicker-label");
    if (flickerTimer) { clearInterval(flickerTimer); flickerTimer = null; }
    over.style.visibility = "visible";
    over.style.clipPath = "";
    label.textContent = "";
    view.querySelector(".slider-label").hidden = mode !== "slider";
    if (mode === "slider") slide();
    if (mode === "flicker") {
      var showB = true;
      flickerTimer = setInterval(function () {
        showB = !showB;
        over.style.visibility = showB ? "visible" : "hidden";
        label.textContent = showB ? "right" : "left";
      }, 500);
    }
    if (mode === "diff") {
      var d = document.getElementById("diff-img");
      if (!d.getAttribute("src")) {
        d.addEventListener("load", function () { setZoom(zoom); });
        d.setAttribute("src", d.getAttribute("data-src"));
        fetch(d.getAttribute("data-src"), {credentials: "same-origin"}).then(function (r) {
          var share = r.headers.get("X-Differ-Share");
          if (share !== null) document.getElementById("diff-share").textContent =
            (parseFloat(share) * 100).toFixed(1) + " % of the pixels differ.";
        });
      }
    }
    setZoom(zoom);
  }
  function slide() {
    var v = document.getElementById("slider").value;
    view.querySelector("img.over").style.clipPath = "inset(0 0 0 " + v + "%)";
  }

  function status(text, bad) {
    var s = document.getElementById("status");
    s.textContent = text;
    s.classList.toggle("bad", !!bad);
  }
  function decide(decision, keep) {
    var body = {kind: pair.dataset.kind, item_id: pair.dataset.a, match_id: pair.dataset.b,
                decision: decision};
    if (keep) body.keep_id = keep;
    status("Saving…");
    fetch(pair.dataset.post, {method: "POST", credentials: "same-origin",
                              headers: {"Content-Type": "application/json"},
                              body: JSON.stringify(body)})
      .then(function (r) {
        if (!r.ok) return r.text().then(function (t) { throw new Error(r.status + " " + t); });
        return r.json();
      })
      .then(function (res) {
        var text = "Saved: " + decision.replace("_", " ") + (keep ? " (keep " + keep + ")" : "");
        if (res.backend && res.backend.indexOf("failed") === 0) text += " — backend: " + res.backend;
        document.getElementById("current-decision").textContent = "Decision: " + decision;
        status(text, res.backend && res.backend.indexOf("failed") === 0);
        if (res.next) window.location.assign(res.next);
      })
      .catch(function (e) { status("Not saved: " + e.message, true); });
  }

  document.querySelectorAll("input[name=mode]").forEach(function (r) {
    r.addEventListener("change", function () { setMode(r.value); });
  });
  document.getElementById("slider").addEventListener("input", slide);
  document.getElementById("zoom-in").addEventListener("click", function () { zoomBy(1.5); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoomBy(1 / 1.5); });
  document.getElementById("zoom-fit").addEventListener("click", function () { setZoom(0); });
  document.getElementById("zoom-full").addEventListener("click", function () { setZoom(1); });
  document.querySelectorAll(".decide button").forEach(function (b) {
    b.addEventListener("click", function () { decide(b.dataset.decision, b.dataset.keep); });
  });
  // Scroll the two side-by-side pictures together when zoomed.
  var scrolls = view.querySelectorAll(".side .scroll");
  scrolls.forEach(function (s, i) {
    s.addEventListener("scroll", function () {
      var o = scrolls[1 - i];
      if (o.scrollLeft !== s.scrollLeft) o.scrollLeft = s.scrollLeft;
      if (o.scrollTop !== s.scrollTop) o.scrollTop = s.scrollTop;
    });
  });

  function go(url) { if (url) window.location.assign(url); }
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target.tagName;
    if (t === "INPUT" && e.target.type !== "radio" && e.target.type !== "range" || t === "TEXTAREA") return;
    var keys = {
      j: function () { go(pair.dataset.next); }, ArrowRight: function () { go(pair.dataset.next); },
      k: function () { go(pair.dataset.prev); }, ArrowLeft: function () { go(pair.dataset.prev); },
      m: function () { decide("merge"); }, n: function () { decide("not_same"); },
      s: function () { decide("skip"); },
      a: function () { if (pair.dataset.kind === "image") decide("keep", pair.dataset.imageA); },
      z: function () { if (pair.dataset.kind === "image") decide("keep", pair.dataset.imageB); },
      b: function () { setMode("side"); }, v: function () { setMode("slider"); },
      f: function () { setMode("flicker"); }, d: function () { setMode("diff"); },
      "+": function () { zoomBy(1.5); }, "=": function () { zoomBy(1.5); },
      "-": function () { zoomBy(1 / 1.5); }, "0": function () { setZoom(0); },
      "1": function () { setZoom(1); }
    };
    if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
  });
})();
