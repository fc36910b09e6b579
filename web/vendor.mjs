// Copy the two onnxruntime-web files the page loads (MIT licence, Microsoft) into the Python package:
// src/privsplit/runtime/ui_static/vendor/ (git-ignored; setuptools ships them via package-data, runs no npm).
// Run after `npm ci` in this folder: `npm run vendor`.
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "node_modules", "onnxruntime-web", "dist");
const out = join(here, "..", "src", "privsplit", "runtime", "ui_static", "vendor");
mkdirSync(out, { recursive: true });
for (const name of ["ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm"]) {
  copyFileSync(join(dist, name), join(out, name));
}
console.log(`vendored onnxruntime-web into ${out}`);
