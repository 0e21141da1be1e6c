/** The modelled CDN (round trip per request, per-connection and link pacing, connection limit): shared with the tests. */
export { cdnProxy, cdnProxyProcess, type CdnOptions, type CdnProxy } from '../test/helpers/cdn-proxy.js';
