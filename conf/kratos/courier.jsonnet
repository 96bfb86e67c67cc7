// Body of each courier delivery: everything a mail provider needs, plus
// the codes, so a test receiver can read them.
function(ctx) {
  recipient: ctx.recipient,
  subject: ctx.subject,
  body: ctx.body,
  template_type: ctx.template_type,
  message_type: ctx.message_type,
  recovery_code: if 'recovery_code' in ctx.template_data then ctx.template_data.recovery_code else null,
  verification_code: if 'verification_code' in ctx.template_data then ctx.template_data.verification_code else null,
  login_code: if 'login_code' in ctx.template_data then ctx.template_data.login_code else null,
  registration_code: if 'registration_code' in ctx.template_data then ctx.template_data.registration_code else null,
}
