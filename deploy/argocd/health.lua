-- Argo CD health check for mailtls's kinds (TlsCompliance, AddressList, OutboundGateway).
-- Install it under resource.customizations.health.mailtls.io_<Kind> in argocd-cm (README).
-- Healthy: this generation is rendered and every relay pod runs it (or no relay reports).
-- Progressing: not looked at yet, or relay pods still applying it.
-- Degraded: Stalled (invalid spec, lost conflict, a relay refused the configuration) or not
-- Ready for another reason (e.g. a missing AddressList).
local hs = {}
local conditions = {}
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    conditions[c.type] = c
  end
end
local ready, applied, stalled = conditions["Ready"], conditions["Applied"], conditions["Stalled"]
local generation = obj.metadata.generation
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.reason .. ": " .. stalled.message
  return hs
end
if ready == nil or ready.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "waiting for mailtls to look at this generation"
  return hs
end
if ready.status ~= "True" then
  hs.status = "Degraded"
  hs.message = ready.reason .. ": " .. ready.message
  return hs
end
if applied ~= nil and applied.status == "False" then
  hs.status = "Progressing"
  hs.message = applied.message
  return hs
end
hs.status = "Healthy"
hs.message = (applied ~= nil and applied.message) or ready.message
return hs
