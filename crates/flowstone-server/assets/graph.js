// FlowStone's asset graph page: pan and zoom by moving the SVG's viewBox,
// a click selects a node, highlights what it reads and what reads it
// (transitively) and loads its detail from the server. htmx redraws the
// graph when events arrive; the view and the selection are put back after
// every redraw. Written for this page only, no library.
(function () {
  "use strict";

  var box = document.getElementById("graph");
  var panel = document.getElementById("node-detail");
  if (!box) {
    return;
  }
  var hint = panel ? panel.innerHTML : "";

  // The part of the graph in view, in graph units; null until first drawn.
  var view = null;
  // The data-id of the selected node, kept across redraws.
  var selected = null;
  // A drag in progress: the last pointer position and whether it moved.
  var drag = null;
  var dragged = false;

  function svg() {
    return box.querySelector("svg.graph");
  }

  // The whole graph in view, centred, never drawn larger than its size.
  function fitted(s) {
    var gw = +s.dataset.width, gh = +s.dataset.height;
    var bw = box.clientWidth || 800, bh = box.clientHeight || 600;
    var scale = Math.max(gw / bw, gh / bh, 1);
    var w = bw * scale, h = bh * scale;
    return { x: (gw - w) / 2, y: (gh - h) / 2, w: w, h: h };
  }

  function apply() {
    var s = svg();
    if (!s) {
      return;
    }
    if (!view) {
      // A graph lower than the box at its fitted scale gets a lower box.
      var scale = Math.max(+s.dataset.width / (box.clientWidth || 800), 1);
      var wanted = Math.max(360, +s.dataset.height / scale + 40);
      if (wanted < box.clientHeight) {
        box.style.height = wanted + "px";
      }
      view = fitted(s);
    }
    // Keep the box's aspect ratio, so a unit is as wide as it is high.
    view.h = view.w * (box.clientHeight || 600) / (box.clientWidth || 800);
    s.setAttribute("viewBox", [view.x, view.y, view.w, view.h].join(" "));
    box.dataset.zoom = ((box.clientWidth || 800) / view.w).toFixed(3);
  }

  // Zooms by `factor` (above 1 is closer) around a point in graph units,
  // the centre of the view by default.
  function zoom(factor, cx, cy) {
    var s = svg();
    if (!s) {
      return;
    }
    if (!view) {
      view = fitted(s);
    }
    var largest = Math.max(+s.dataset.width, +s.dataset.height, box.clientWidth) * 3;
    var w = Math.min(Math.max(view.w / factor, 150), largest);
    var k = view.w / w;
    if (cx === undefined) {
      cx = view.x + view.w / 2;
      cy = view.y + view.h / 2;
    }
    view = { x: cx - (cx - view.x) / k, y: cy - (cy - view.y) / k, w: w, h: view.h / k };
    apply();
  }

  // Moves the content by (dx, dy) screen pixels.
  function pan(dx, dy) {
    var s = svg();
    if (!s) {
      return;
    }
    if (!view) {
      view = fitted(s);
    }
    var k = view.w / (box.clientWidth || 800);
    view.x -= dx * k;
    view.y -= dy * k;
    apply();
  }

  function pointInGraph(event) {
    var r = svg().getBoundingClientRect();
    return {
      x: view.x + (event.clientX - r.left) * view.w / r.width,
      y: view.y + (event.clientY - r.top) * view.h / r.height,
    };
  }

  // Marks the selected node, everything upstream and downstream of it and
  // the edges between them; the rest is dimmed by the style sheet.
  function highlight() {
    var s = svg();
    if (!s) {
      return;
    }
    var marked = s.querySelectorAll(".hl, .selected");
    for (var i = 0; i < marked.length; i++) {
      marked[i].classList.remove("hl", "selected");
    }
    var node = selected && s.querySelector('g.node[data-id="' + CSS.escape(selected) + '"]');
    if (!node) {
      s.classList.remove("focus");
      return;
    }
    var into = {}, outOf = {};
    var edges = s.querySelectorAll("path.edge");
    for (i = 0; i < edges.length; i++) {
      var e = edges[i];
      (outOf[e.dataset.u] = outOf[e.dataset.u] || []).push(e);
      (into[e.dataset.v] = into[e.dataset.v] || []).push(e);
    }
    var reached = {};
    reached[node.dataset.n] = true;
    function walk(adjacent, far) {
      var stack = [node.dataset.n], seen = {};
      while (stack.length) {
        var list = adjacent[stack.pop()] || [];
        for (var j = 0; j < list.length; j++) {
          var other = list[j].dataset[far];
          list[j].classList.add("hl");
          reached[other] = true;
          if (!seen[other]) {
            seen[other] = true;
            stack.push(other);
          }
        }
      }
    }
    walk(into, "u");
    walk(outOf, "v");
    var nodes = s.querySelectorAll("g.node");
    for (i = 0; i < nodes.length; i++) {
      if (reached[nodes[i].dataset.n]) {
        nodes[i].classList.add("hl");
      }
    }
    node.classList.add("selected");
    s.classList.add("focus");
  }

  // Asks the server for the selected node's detail; while events keep
  // redrawing the graph, at most once a second, the last one included.
  var loading = null, again = false;
  function loadDetail(now) {
    if (!panel || !window.htmx) {
      return;
    }
    if (!selected) {
      panel.innerHTML = hint;
      return;
    }
    if (loading && !now) {
      again = true;
      return;
    }
    clearTimeout(loading);
    again = false;
    loading = setTimeout(function () {
      loading = null;
      if (again) {
        loadDetail(false);
      }
    }, 1000);
    var url = "/ui/graph/node?id=" + encodeURIComponent(selected) +
      "&expand=" + encodeURIComponent(box.dataset.expand || "");
    window.htmx.ajax("GET", url, { target: panel, swap: "innerHTML" });
  }

  function select(id) {
    selected = id;
    if (id) {
      box.dataset.selected = id;
    } else {
      delete box.dataset.selected;
    }
    highlight();
    loadDetail(true);
  }

  // Brings a node into view when it is outside.
  function reveal(id) {
    var s = svg();
    var node = s && s.querySelector('g.node[data-id="' + CSS.escape(id) + '"]');
    if (!node) {
      return false;
    }
    var m = /translate\(([-\d.]+) ([-\d.]+)\)/.exec(node.getAttribute("transform"));
    if (m && view) {
      var x = +m[1], y = +m[2];
      if (x < view.x || y < view.y || x + 180 > view.x + view.w || y + 52 > view.y + view.h) {
        view.x = x + 90 - view.w / 2;
        view.y = y + 26 - view.h / 2;
        apply();
      }
    }
    return true;
  }

  box.addEventListener("wheel", function (event) {
    if (!svg()) {
      return;
    }
    event.preventDefault();
    if (!view) {
      view = fitted(svg());
    }
    var p = pointInGraph(event);
    var pixels = event.deltaY * (event.deltaMode === 1 ? 32 : 1);
    zoom(Math.pow(1.0015, -pixels), p.x, p.y);
  }, { passive: false });

  box.addEventListener("pointerdown", function (event) {
    if (event.button === 0 && svg()) {
      drag = { x: event.clientX, y: event.clientY, moved: false };
    }
  });
  window.addEventListener("pointermove", function (event) {
    if (!drag) {
      return;
    }
    var dx = event.clientX - drag.x, dy = event.clientY - drag.y;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) {
      return;
    }
    drag.moved = true;
    box.classList.add("dragging");
    drag.x = event.clientX;
    drag.y = event.clientY;
    pan(dx, dy);
  });
  window.addEventListener("pointerup", function () {
    // A drag that moved is not a click on what it started on.
    dragged = !!(drag && drag.moved);
    drag = null;
    box.classList.remove("dragging");
  });

  box.addEventListener("click", function (event) {
    if (dragged) {
      dragged = false;
      event.preventDefault();
      return;
    }
    var node = event.target.closest("g.node");
    if (node) {
      event.preventDefault();
      select(node.dataset.id);
    } else if (!event.target.closest("a")) {
      select(null);
    }
  });
  // A double click opens the asset page (or the group).
  box.addEventListener("dblclick", function (event) {
    var node = event.target.closest("g.node");
    var link = node && node.closest("a");
    if (link) {
      window.location.href = link.getAttribute("href");
    }
  });

  box.addEventListener("keydown", function (event) {
    var step = 80;
    switch (event.key) {
      case "+":
      case "=":
        zoom(1.25);
        break;
      case "-":
      case "_":
        zoom(0.8);
        break;
      case "0":
        view = null;
        apply();
        break;
      case "ArrowLeft":
        pan(step, 0);
        break;
      case "ArrowRight":
        pan(-step, 0);
        break;
      case "ArrowUp":
        pan(0, step);
        break;
      case "ArrowDown":
        pan(0, -step);
        break;
      case "Escape":
        select(null);
        break;
      default:
        return;
    }
    event.preventDefault();
  });

  function button(id, action) {
    var b = document.getElementById(id);
    if (b) {
      b.addEventListener("click", action);
    }
  }
  button("zoom-in", function () { zoom(1.25); });
  button("zoom-out", function () { zoom(0.8); });
  button("zoom-fit", function () { view = null; apply(); });
  button("clear-selection", function () { select(null); });

  // A neighbour named in the detail panel selects that node when it is on
  // the graph; otherwise the link opens its page.
  if (panel) {
    panel.addEventListener("click", function (event) {
      var link = event.target.closest("[data-select]");
      if (link && reveal(link.dataset.select)) {
        event.preventDefault();
        select(link.dataset.select);
      }
    });
  }

  document.body.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target === box) {
      apply();
      highlight();
      if (selected) {
        loadDetail(false);
      }
    }
  });
  window.addEventListener("resize", apply);
  apply();
})();
