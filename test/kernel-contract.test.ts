/**
 * The kernel contract against the modules' real exports: src/kernels/types.ts
 * (`Kernels`) declares exactly what wasm/flashlm.wasm exports, with each
 * kernel's arity; the threads build exports those plus `SplitKernels`
 * (src/kernels/pool.ts); and src/kernels/names.ts, the list loadKernels
 * checks a module against, is generated from them and up to date.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import ts from 'typescript';
import { compileKernels, createArena, loadKernels, DEFAULT_MT_WASM_URL, DEFAULT_WASM_URL } from '../src/kernels/load.js';
import { KERNEL_NAMES, SPLIT_KERNEL_NAMES } from '../src/kernels/names.js';
import { namesSource } from '../scripts/kernel-names.js';

/** Method name -> parameter count of `iface` in `file`. */
function declared(file: string, iface: string): Map<string, number> {
  const path = new URL(`../${file}`, import.meta.url);
  const src = ts.createSourceFile(file, readFileSync(path, 'utf8'), ts.ScriptTarget.ES2022, true);
  const methods = new Map<string, number>();
  src.forEachChild((node) => {
    if (ts.isInterfaceDeclaration(node) && node.name.text === iface) {
      for (const m of node.members) if (ts.isMethodSignature(m)) methods.set(m.name.getText(src), m.parameters.length);
    }
  });
  return methods;
}

async function exportsOf(url: URL, shared: boolean): Promise<Map<string, number>> {
  const mod = await compileKernels(url);
  const inst = await WebAssembly.instantiate(mod, { env: { memory: createArena(4 << 20, { shared }) } });
  const out = new Map<string, number>();
  for (const d of WebAssembly.Module.exports(mod)) {
    const fn = inst.exports[d.name];
    if (d.kind === 'function' && typeof fn === 'function') out.set(d.name, fn.length);
  }
  return out;
}

function same(t: import('ava').ExecutionContext, methods: Map<string, number>, exported: Map<string, number>, what: string) {
  t.deepEqual([...methods.keys()].filter((n) => !exported.has(n)).sort(), [], `${what}: declared but not exported`);
  t.deepEqual([...exported.keys()].filter((n) => !methods.has(n)).sort(), [], `${what}: exported but not declared`);
  for (const [name, arity] of methods) if (exported.has(name)) t.is(exported.get(name), arity, `${what}: ${name} parameters`);
}

test('types.ts declares exactly the module\'s exported functions, with their arity', async (t) => {
  const methods = declared('src/kernels/types.ts', 'Kernels');
  t.true(methods.size > 50, `found ${methods.size} declared kernels`);
  same(t, methods, await exportsOf(DEFAULT_WASM_URL, false), 'flashlm.wasm');
});

test('the threads build exports the contract plus SplitKernels', async (t) => {
  const methods = new Map([...declared('src/kernels/types.ts', 'Kernels'), ...declared('src/kernels/pool.ts', 'SplitKernels')]);
  same(t, methods, await exportsOf(DEFAULT_MT_WASM_URL, true), 'flashlm.mt.wasm');
});

test('names.ts is generated from the contract and up to date; loadKernels rejects a module missing a kernel', async (t) => {
  t.is(readFileSync(new URL('../src/kernels/names.ts', import.meta.url), 'utf8'), namesSource(), 'run: node --import=tsx scripts/kernel-names.ts');
  t.deepEqual([...KERNEL_NAMES], [...declared('src/kernels/types.ts', 'Kernels').keys()]);
  t.deepEqual([...SPLIT_KERNEL_NAMES], [...declared('src/kernels/pool.ts', 'SplitKernels').keys()]);
  // A module exporting only some of the kernels (an old or foreign build) is refused by name.
  const partial = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 3, 2, 1, 0, 7, 13, 1, 9, 104, 101, 97, 112, 95, 98, 97, 115, 101, 0, 0, 10, 4, 1, 2, 0, 11]);
  await t.throwsAsync(loadKernels(createArena(1 << 16), partial), { message: /lacks export matvec_f32/ });
});
