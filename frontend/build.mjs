// Builds the app into the runtime package (teleport_runtime/proxy/webassets/), which the proxy
// serves and the runtime's wheel carries: hosts need no npm.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

const out = new URL("../teleport_runtime/proxy/webassets/", import.meta.url).pathname;
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: { app: "src/app.ts" },
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "esm",
  target: ["chrome110", "firefox110", "safari16"],
  outdir: out,
  loader: { ".woff": "dataurl", ".woff2": "dataurl", ".ttf": "dataurl" },
  legalComments: "linked",
  logLevel: "info",
});
await copyFile("src/index.html", out + "index.html");
