/**
 * Debian's Chromium driven by playwright-core: never a downloaded browser.
 * One persistent profile (a fresh --user-data-dir per run) so that OPFS
 * survives between page loads of the same run. Missing chromium is an error,
 * not a skip: CI installs it (apt-get install -y chromium).
 */
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export function findChromium(): string {
  for (const p of [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser']) {
    if (!p) continue;
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  throw new Error('chromium is not installed: run `apt-get update && apt-get install -y chromium` (the browser tests use Debian\'s Chromium)');
}

export interface Browser {
  readonly context: BrowserContext;
  readonly profile: string;
  close(): Promise<void>;
}

/** Launches Chromium with a new, empty profile; close() also deletes the profile. */
export async function launchBrowser(): Promise<Browser> {
  const executablePath = findChromium();
  const profile = mkdtempSync(join(tmpdir(), 'flashlm-chromium-'));
  let context: BrowserContext;
  try {
    // launchPersistentContext passes the profile as --user-data-dir.
    context = await chromium.launchPersistentContext(profile, { executablePath, headless: true, args: CHROMIUM_ARGS, timeout: 30_000, viewport: { width: 1280, height: 800 } });
  } catch (e) {
    rmSync(profile, { recursive: true, force: true });
    throw e;
  }
  return {
    context,
    profile,
    async close() {
      await Promise.race([context.close().catch(() => {}), new Promise((r) => setTimeout(r, 10_000))]);
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
