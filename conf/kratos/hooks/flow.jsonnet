// What Gate's hooks need: the flow (to find its tenant) and, once Kratos
// has saved it, the identity.  Nothing else about the user leaves Kratos.
function(ctx) {
  flow_id: ctx.flow.id,
  identity_id: if std.objectHas(ctx, 'identity') && ctx.identity != null
               then ctx.identity.id else null,
}
