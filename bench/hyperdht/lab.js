'use strict'
// HyperDHT in the NAT lab, beside meshkey's hole punching (bench/hyperdht.py drives it).
//
//   node lab.js bootstrap --host H --ports P1,P2 [--first] [--bootstrap H:P,...]
//       public DHT nodes on host H (the first one of the lab made with
//       HyperDHT.bootstrapper); prints {"event":"ready"} once every node is bootstrapped.
//   node lab.js server --bootstrap H:P,... [--port P]
//       a fresh key pair listening behind whatever NAT the host is behind; echoes what a
//       client writes; prints {"event":"listening","publicKey":HEX} (or "listen-failed").
//   node lab.js client --bootstrap H:P,... --key HEX --peer-host IP [--port P] [--timeout MS]
//       waits for fullyBootstrapped(), then times connect(KEY) -> 'open' -> the first echoed
//       reply; prints one {"event":"result",...} line: whether it connected, whether the
//       raw UDX stream's remote is the server's NAT (--peer-host) and not another address,
//       the times, HyperDHT's own punch counters, the error code if it failed.
//
// JSON lines on stdout only; every process exits on SIGTERM or when stdin closes.

const HyperDHT = require('hyperdht')

function parse(argv) {
  const args = { _: argv[0] }
  for (let i = 1; i < argv.length; i++) {
    const name = argv[i].replace(/^--/, '')
    const next = argv[i + 1]
    if (next === undefined || next.startsWith('--')) args[name] = true
    else args[name] = argv[++i]
  }
  return args
}

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, at: Date.now(), ...fields }) + '\n')
}

function bootstrapList(text) {
  if (!text || text === true) return []
  return text.split(',').map((entry) => {
    const [host, port] = entry.split(':')
    return { host, port: Number(port) }
  })
}

const nodes = []
let closing = false

async function close(code = 0) {
  if (closing) return
  closing = true
  for (const node of nodes.reverse()) {
    try {
      await node.destroy({ force: true })
    } catch {}
  }
  process.exit(code)
}

process.on('SIGTERM', () => close(0))
process.on('SIGINT', () => close(0))
process.stdin.on('end', () => close(0))
process.stdin.resume()

async function bootstrap(args) {
  const host = args.host
  const ports = String(args.ports).split(',').map(Number)
  const known = bootstrapList(args.bootstrap)
  for (const [index, port] of ports.entries()) {
    let node
    if (args.first && index === 0) {
      node = HyperDHT.bootstrapper(port, host)
    } else {
      // Public DHT nodes of the lab: their WAN address, a fixed port, never ephemeral, never
      // firewalled (NATLAB.md: what HyperDHT 6.34 needed to classify NATs here).
      node = new HyperDHT({
        host,
        port,
        anyPort: false,
        ephemeral: false,
        firewalled: false,
        bootstrap: known
      })
    }
    nodes.push(node)
    await node.fullyBootstrapped()
    known.push({ host, port })
  }
  emit('ready', { host, ports })
}

async function server(args) {
  const dht = new HyperDHT({ bootstrap: bootstrapList(args.bootstrap), port: Number(args.port) || undefined })
  nodes.push(dht)
  const keyPair = HyperDHT.keyPair()
  const srv = dht.createServer((socket) => {
    const raw = socket.rawStream
    emit('connection', {
      remoteHost: raw ? raw.remoteHost : null,
      remotePort: raw ? raw.remotePort : null
    })
    socket.on('data', (data) => socket.write(data))
    socket.on('error', () => {})
  })
  try {
    await dht.fullyBootstrapped()
    await srv.listen(keyPair)
  } catch (error) {
    emit('listen-failed', { error: error.code || String(error) })
    return
  }
  emit('listening', {
    publicKey: keyPair.publicKey.toString('hex'),
    firewalled: dht.firewalled,
    nat: dht.port ? `${dht.host}:${dht.port}` : null,
    randomized: dht.randomized
  })
}

async function client(args) {
  const dht = new HyperDHT({ bootstrap: bootstrapList(args.bootstrap), port: Number(args.port) || undefined })
  nodes.push(dht)
  const timeout = Number(args.timeout) || 30000
  const startedBootstrap = Date.now()
  await dht.fullyBootstrapped()
  const bootstrapMs = Date.now() - startedBootstrap
  const publicKey = Buffer.from(args.key, 'hex')
  const result = { bootstrapMs, firewalled: dht.firewalled, randomized: dht.randomized }
  const started = process.hrtime.bigint()
  const ms = () => Number(process.hrtime.bigint() - started) / 1e6
  const socket = dht.connect(publicKey)
  let done = false
  const finish = (fields) => {
    if (done) return
    done = true
    const raw = socket.rawStream
    const remoteHost = raw ? raw.remoteHost : null
    emit('result', {
      ...result,
      ...fields,
      remoteHost,
      remotePort: raw ? raw.remotePort : null,
      direct: Boolean(fields.connected && remoteHost === args['peer-host']),
      punches: { ...dht.stats.punches }
    })
    socket.destroy()
    setTimeout(() => close(0), 50)
  }
  const timer = setTimeout(() => finish({ connected: false, error: 'TIMEOUT' }), timeout)
  socket.on('open', () => {
    result.openMs = ms()
    socket.write(Buffer.from('ping'))
  })
  socket.once('data', () => {
    clearTimeout(timer)
    finish({ connected: true, replyMs: ms() })
  })
  socket.on('error', (error) => {
    clearTimeout(timer)
    finish({ connected: false, error: error.code || String(error), failedMs: ms() })
  })
}

const args = parse(process.argv.slice(2))
const modes = { bootstrap, server, client }
if (!modes[args._]) {
  process.stderr.write('usage: node lab.js bootstrap|server|client ...\n')
  process.exit(2)
}
modes[args._](args).catch((error) => {
  emit('error', { error: error.code || String(error) })
  close(1)
})
