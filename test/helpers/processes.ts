/**
 * Child processes for the cross-runtime tests: the `deno` binary that the
 * npm package `deno` (a devDependency) installs, a runner with a deadline,
 * and long-running servers that announce their URL on stdout. Missing deno
 * is an error, not a skip: `npm install` provides it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export function findDeno(): string {
  const p = ROOT + 'node_modules/.bin/deno';
  try {
    accessSync(p, constants.X_OK);
    return p;
  } catch {
    throw new Error('deno is not installed: run `npm install` (the devDependency `deno` brings the binary)');
  }
}

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command to completion (killed after timeoutMs). */
export function run(cmd: string, args: string[], o: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { cwd: o.cwd ?? ROOT, env: { ...process.env, NO_COLOR: '1', ...o.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${o.timeoutMs ?? 60_000} ms]`;
      child.kill('SIGKILL');
    }, o.timeoutMs ?? 60_000);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: performance.now() - t0 });
    });
  });
}

export interface Service {
  /** What the ready pattern's first group captured (e.g. the URL). */
  readonly url: string;
  readonly child: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

/**
 * Starts a server and resolves once a stdout line matches `ready` (its group 1
 * is the URL), or, for a server that prints nothing (workerd), once `ready`
 * given as a URL answers an HTTP request.
 */
export function startService(cmd: string, args: string[], ready: RegExp | string, o: { env?: Record<string, string>; timeoutMs?: number } = {}): Promise<Service> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, NO_COLOR: '1', ...o.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let exited = false;
    const exit = new Promise<void>((r) => child.once('exit', () => ((exited = true), r())));
    const stop = async () => {
      if (!exited) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exit;
        clearTimeout(t);
      }
    };
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`${cmd} ${args.join(' ')} did not start in time:\n${out}`));
    }, o.timeoutMs ?? 30_000);
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = typeof ready === 'string' ? null : ready.exec(out);
      if (m) {
        clearTimeout(timer);
        child.stdout!.off('data', onData);
        child.stdout!.on('data', (x: Buffer) => (out += x.toString()));
        resolve({ url: m[1] ?? m[0], child, output: () => out, stop });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    if (typeof ready === 'string') {
      const poll = async (): Promise<void> => {
        while (!exited) {
          try {
            await fetch(ready, { signal: AbortSignal.timeout(5000) });
            clearTimeout(timer);
            resolve({ url: new URL(ready).origin, child, output: () => out, stop });
            return;
          } catch {
            await new Promise((r) => setTimeout(r, 100));
          }
        }
      };
      void poll();
    }
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    void exit.then(() => {
      clearTimeout(timer);
      reject(new Error(`${cmd} exited before it was ready:\n${out}`));
    });
  });
}
