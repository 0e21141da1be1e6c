#!/usr/bin/env node
// The compiled CLI (npm install / npm run build produce dist/).
import { main } from '../dist/cli/main.js';

await main(process.argv);
