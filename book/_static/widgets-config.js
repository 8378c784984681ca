// Tell require.js where the widget front ends of the notebooks live: in the book itself, under
// _static/vendor/ (tools/fetch_vendor.py puts them there), so that the widgets of the HTML book
// work offline and no request leaves the page's own server.
(function () {
  var vendor = document.currentScript.src.replace(/[^/]*$/, "") + "vendor/";
  window.requirejs.config({
    paths: {
      anywidget: vendor + "anywidget/index",
      // The widget manager finds its icon fonts relative to this module path.
      "@jupyter-widgets/html-manager/dist": vendor + "html-manager",
    },
  });
})();
