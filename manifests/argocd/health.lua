-- ArgoCD health check for vmops.dev/WSO2Cluster (gopher-lua, Lua 5.1: no goto, no integer type).
-- Kept in sync with argocd-cm-health.yaml by tests/integration/test_argocd_health.py.
-- ArgoCD runs it without the string and math libraries: plain comparisons and `..` only.
--
--   no status yet, or status.observedGeneration != metadata.generation  -> Progressing
--   status.analysis.phase Failed (also while a Rollback runs), unless Ready -> Degraded
--   Degraded=True (failed node, rollback, missing Secret, LB unreachable) -> Degraded
--   status.phase Paused, nothing in flight (a canary pause step, StepPaused) -> Suspended
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

-- A failed analysis names the metric, the node's value and the baseline. Under failurePolicy
-- Rollback the Degraded condition says RollingBack/RolledBack instead: show both.
local analysis = obj.status.analysis
if analysis ~= nil and analysis.phase == "Failed" and not is_true(ready) then
  hs.status = "Degraded"
  if analysis.message ~= nil and analysis.message ~= "" then
    hs.message = "Analysis failed: " .. analysis.message
    if is_true(degraded) and degraded.reason ~= "AnalysisFailed" then
      hs.message = hs.message .. "; " .. message(degraded, "")
    end
  else
    hs.message = message(degraded, "Analysis failed")
  end
  return hs
end

if is_true(degraded) then
  hs.status = "Degraded"
  hs.message = message(degraded, "Degraded")
  return hs
end

-- A canary pause step (reason StepPaused; timed or until vmops.dev/promote) holds with nothing
-- in flight, like spec.update.paused.
if obj.status.phase == "Paused" and not is_true(progressing) then
  hs.status = "Suspended"
  hs.message = message(ready, message(progressing, "Rollout paused"))
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
