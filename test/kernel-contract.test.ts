/**
 * The kernel contract (src/kernels/types.ts, the `Kernels` interface) against
 * the module's real exports: every declared kernel exists with the declared
 * arity, and every exported function is declared — so the hand-written
 * contract cannot drift from assembly/index.ts.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import ts from 'typescript';
import { compileKernels, createArena } from '../src/kernels/load.js';

async function declared(): Promise<Map<string, number>> {
  const file = new URL('../src/kernels/types.ts', import.meta.url);
  const src = ts.createSourceFile('types.ts', await readFile(file, 'utf8'), ts.ScriptTarget.ES2022, true);
  const methods = new Map<string, number>();
  src.forEachChild((node) => {
    if (ts.isInterfaceDeclaration(node) && node.name.text === 'Kernels') {
      for (const m of node.members) if (ts.isMethodSignature(m)) methods.set(m.name.getText(src), m.parameters.length);
    }
  });
  return methods;
}

test('types.ts declares exactly the module\'s exported functions, with their arity', async (t) => {
  const methods = await declared();
  t.true(methods.size > 50, `found ${methods.size} declared kernels`);
  const mod = await compileKernels();
  const inst = await WebAssembly.instantiate(mod, { env: { memory: createArena(4 << 20) } });
  const exported = new Map<string, number>();
  for (const d of WebAssembly.Module.exports(mod)) {
    const fn = inst.exports[d.name];
    if (d.kind === 'function' && typeof fn === 'function') exported.set(d.name, fn.length);
  }
  t.deepEqual([...methods.keys()].filter((n) => !exported.has(n)).sort(), [], 'declared in types.ts but not exported');
  t.deepEqual([...exported.keys()].filter((n) => !methods.has(n)).sort(), [], 'exported but not declared in types.ts');
  for (const [name, arity] of methods) if (exported.has(name)) t.is(exported.get(name), arity, `${name}: parameters`);
});
