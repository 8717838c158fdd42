// Independent DKIM verification for relay's tests: mailauth (not dkimpy).
// usage: node verify.js NAMESERVER(host:port) < message.eml
// prints JSON: [{signingDomain, selector, algo, status}], one per DKIM-Signature.
'use strict';
const { Resolver } = require('node:dns').promises;
const { dkimVerify } = require('mailauth/lib/dkim/verify');

async function main() {
    const resolver = new Resolver({ timeout: 2000, tries: 1 });
    resolver.setServers([process.argv[2]]);
    const chunks = [];
    for await (const chunk of process.stdin) chunks.push(chunk);
    const result = await dkimVerify(Buffer.concat(chunks), {
        resolver: (name, rrtype) => resolver.resolve(name, rrtype),
    });
    const out = result.results.map((r) => ({
        signingDomain: r.signingDomain,
        selector: r.selector,
        algo: r.algo,
        status: r.status && r.status.result,
        comment: r.status && r.status.comment,
    }));
    process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
    process.stderr.write(String(err && err.stack || err) + '\n');
    process.exit(1);
});
