/** The CLI from the sources (bin/flashlm.js runs the compiled dist/): `node --import=tsx fuzz/flashlm.ts run ...`. */
import { main } from '../src/cli/main.js';

await main(process.argv);
