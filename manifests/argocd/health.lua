-- ArgoCD health check for vmops.dev/WSO2Cluster (gopher-lua, Lua 5.1: no goto, no integer type).
-- Kept in sync with argocd-cm-health.yaml by tests/integration/test_argocd_health.py.
--
--   no status yet, or status.observedGeneration != metadata.generation  -> Progressing
--   Degraded=True (failed node, rollback, missing Secret, LB unreachable) -> Degraded
--   spec.update.paused, nothing in flight                                  -> Suspended
--   Ready=True                                                              -> Healthy
--   anything else (a rollout running, a paused node being finished)        -> Progressing
local hs = {}

local function condition(ctype)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == ctype then
        return c
      end
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function message(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (status is for generation " .. tostring(obj.status.observedGeneration) .. ")"
  return hs
end

local ready = condition("Ready")
local progressing = condition("Progressing")
local degraded = condition("Degraded")

if is_true(degraded) then
  hs.status = "Degraded"
  hs.message = message(degraded, "Degraded")
  return hs
end

local paused = obj.spec ~= nil and obj.spec.update ~= nil and obj.spec.update.paused == true
if paused then
  if is_true(progressing) then
    -- A paused rollout first finishes the node in flight and puts it back in rotation.
    hs.status = "Progressing"
    hs.message = "Pausing after the node in flight: " .. message(progressing, "")
  else
    hs.status = "Suspended"
    hs.message = message(ready, "Rollout paused (spec.update.paused)")
  end
  return hs
end

if is_true(ready) then
  hs.status = "Healthy"
  hs.message = message(ready, "All nodes ready")
  return hs
end

hs.status = "Progressing"
if is_true(progressing) then
  hs.message = message(progressing, "Rollout in progress")
else
  hs.message = message(ready, "Waiting for the nodes to become ready")
end
return hs
