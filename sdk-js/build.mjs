// Build the snippet: src/*.js -> dist/ringback.min.js (one minified IIFE).
//
//   node build.mjs            build into dist/ (the committed file the engine serves)
//   node build.mjs OUT.js     build elsewhere (the staleness test compares the two)
//   node build.mjs --size     build and print bytes raw / gzip -9
//
// Options are fixed here so every build of the same sources is byte-identical.

import { build } from 'esbuild';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const outfile = args.find((a) => !a.startsWith('--')) || join(here, 'dist', 'ringback.min.js');

await build({
  entryPoints: [join(here, 'src', 'index.js')],
  outfile,
  bundle: true,
  minify: true,
  format: 'iife',
  // Evergreen browsers and Safari 14+: no transpiling of ?. or ** needed.
  target: 'es2020',
  legalComments: 'none',
  // No banner: every byte counts against the 3 KB budget (the version is in
  // package.json and the file's ETag identifies the build).
  logLevel: 'warning',
});

if (args.includes('--size')) {
  // Node's zlib; `gzip -9` (what the size test measures) may differ by a few bytes.
  const raw = readFileSync(outfile);
  console.log(`${outfile}: ${raw.length} bytes, ${gzipSync(raw, { level: 9 }).length} gzip -9`);
}
