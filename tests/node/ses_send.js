// Sends through relay's SES API with the clients applications use: nodemailer's SES
// transport over @aws-sdk/client-sesv2, and the SDK's SendEmailCommand alone.
// Usage: node ses_send.js '{"endpoint": ..., "region": ..., "key": ..., "secret": ...,
//                          "from": ..., "to": ..., "subject": ..., "via": "nodemailer"|"sdk"}'
// Prints one JSON line: {"ok": true, "messageId": ...} or {"ok": false, "name": ..., "status": ...}.
"use strict";
const { SESv2Client, SendEmailCommand } = require("@aws-sdk/client-sesv2");
const nodemailer = require("nodemailer");

async function main() {
  const a = JSON.parse(process.argv[2]);
  const sesClient = new SESv2Client({
    region: a.region,
    endpoint: a.endpoint,
    credentials: { accessKeyId: a.key, secretAccessKey: a.secret },
    maxAttempts: 1,
  });
  try {
    let messageId;
    if (a.via === "nodemailer") {
      const transport = nodemailer.createTransport({ SES: { sesClient, SendEmailCommand } });
      const info = await transport.sendMail({
        from: a.from, to: a.to, subject: a.subject,
        text: "sent by nodemailer's SES transport\n",
        html: "<p>sent by <b>nodemailer</b>'s SES transport</p>",
      });
      messageId = info.response;
    } else {
      const out = await sesClient.send(new SendEmailCommand({
        FromEmailAddress: a.from,
        Destination: { ToAddresses: [a.to] },
        Content: { Simple: { Subject: { Data: a.subject },
                             Body: { Text: { Data: "sent by @aws-sdk/client-sesv2\n" } } } },
      }));
      messageId = out.MessageId;
    }
    console.log(JSON.stringify({ ok: true, messageId }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, name: e.name,
                                 status: e.$metadata && e.$metadata.httpStatusCode,
                                 message: String(e.message) }));
  }
}

main();
