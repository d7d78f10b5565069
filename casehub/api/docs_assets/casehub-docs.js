// Starts Swagger UI on /docs. A file of its own rather than an inline script, so that the page's
// Content-Security-Policy can say script-src 'self' and nothing more.
"use strict";

(function () {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    domNode: root,
    // The page names the document (Flask's url_for), so a path prefix needs no edit here.
    // "Try it out" resolves the document's server URL against the document's own address: a
    // relative or absent one means this origin, which connect-src 'self' allows.
    url: root.dataset.openapiUrl,
    // Otherwise Swagger UI sends the document to validator.swagger.io for a badge.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
  });
})();
