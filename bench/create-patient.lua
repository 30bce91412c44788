-- wrk script: POST a new Patient per request (the server assigns the id).
-- wrk -t2 -c32 -d10s -s bench/create-patient.lua http://127.0.0.1:18080/fhir/Patient
local counter = 0

function setup(thread)
  thread:set("prefix", tostring(math.random(1, 1e9)))
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"resourceType":"Patient","identifier":[{"system":"urn:yilian:bench","value":"%s-%d"}],' ..
    '"active":true,"name":[{"use":"official","family":"Lindqvist","given":["Astrid","Maria"]}],' ..
    '"telecom":[{"system":"phone","value":"+46 8 123 456 78","use":"home"}],' ..
    '"gender":"female","birthDate":"1974-12-25",' ..
    '"address":[{"use":"home","line":["Storgatan 12"],"city":"Uppsala","postalCode":"753 20","country":"SE"}]}',
    prefix or "p", counter)
  return wrk.format("POST", nil, {["Content-Type"] = "application/fhir+json"}, body)
end
