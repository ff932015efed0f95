// Runs the conformance suite's origin server, but bound to 127.0.0.1 only.
//
// The suite's server calls `server.listen(port)`, which binds every
// interface. This wrapper makes a listen() call that names no host use the
// loopback address, then loads the suite's server module unchanged.
//
// usage: node origin.mjs <path to the suite's server/server.mjs>
// (port and pid file come from npm_config_port / npm_config_pidfile, as the
// suite's own `npm run server` would pass them)

import net from 'node:net'
import { pathToFileURL } from 'node:url'

const originalListen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  const first = args[0]
  const portOnly = (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) &&
    (args.length === 1 || typeof args[1] === 'function')
  if (portOnly) args.splice(1, 0, '127.0.0.1')
  return originalListen.apply(this, args)
}

const serverModule = process.argv[2]
if (!serverModule) {
  console.error('usage: node origin.mjs <suite>/server/server.mjs')
  process.exit(2)
}
await import(pathToFileURL(serverModule).href)
