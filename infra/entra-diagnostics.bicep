// The Entra ID diagnostic setting that streams a tenant's sign-in and audit logs to the Event Hub
// of modules/entra-stream.bicep, from where ADX ingests them into EntraActivityRaw.
//
// Tenant scope: a diagnostic setting of Entra ID itself belongs to no subscription. It is deployed
// apart from main.bicep, by a Security Administrator or Global Administrator of the tenant whose
// logs are streamed (P1 or P2), with main.bicep's entraEventHubAuthorizationRuleId and
// entraEventHubName outputs:
//
//   az deployment tenant create --name auditlake-entra-diagnostics --location <region> \
//     --template-file infra/entra-diagnostics.bicep \
//     --parameters eventHubAuthorizationRuleId=<entraEventHubAuthorizationRuleId> \
//                  eventHubName=<entraEventHubName>
//
// Entra requires the Event Hubs namespace to be in a subscription of that same tenant. A tenant
// deployment also needs Microsoft.Resources/deployments/* at the tenant
// root ('/'); docs/entra.md has the prerequisites and the cross-tenant route.
targetScope = 'tenant'

@description('Name of the diagnostic setting.')
param name string = 'auditlake-entra-to-adx'

@description('Resource id of the Send-only authorization rule of the Event Hubs namespace (main.bicep output entraEventHubAuthorizationRuleId).')
param eventHubAuthorizationRuleId string

@description('Name of the event hub (main.bicep output entraEventHubName). Always given: without it the setting creates hubs of its own and its rule needs Manage rights.')
@minLength(1)
param eventHubName string

// Only the categories infra/kql/entra.kql expands into tables. The raw table keeps nothing
// (soft-delete 0: its rows exist only for the update policies), so a category without an
// update policy, such as ProvisioningLogs or RiskyUsers, would be streamed, paid for and dropped
// without a trace.
@description('Entra ID log categories to stream: AuditLogs (directory audit), SignInLogs (interactive), NonInteractiveUserSignInLogs, ServicePrincipalSignInLogs, ManagedIdentitySignInLogs.')
@minLength(1)
@allowed([
  'AuditLogs'
  'SignInLogs'
  'NonInteractiveUserSignInLogs'
  'ServicePrincipalSignInLogs'
  'ManagedIdentitySignInLogs'
])
param categories array = [
  'AuditLogs'
  'SignInLogs'
  'NonInteractiveUserSignInLogs'
  'ServicePrincipalSignInLogs'
  'ManagedIdentitySignInLogs'
]

resource entraDiagnostics 'Microsoft.AADIAM/diagnosticSettings@2017-04-01' = {
  name: name
  properties: {
    eventHubAuthorizationRuleId: eventHubAuthorizationRuleId
    eventHubName: eventHubName
    logs: [for category in categories: {
      category: category
      enabled: true
    }]
  }
}

output name string = entraDiagnostics.name
output categories array = categories
