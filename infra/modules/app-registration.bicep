extension microsoftGraphV1

// The multi-tenant app registration the collector authenticates as in every monitored tenant.
// With authMode 'federated' it trusts the function app's managed identity as a federated
// credential, so no secret exists anywhere. Kept apart (and small) because it declares the
// Microsoft Graph extension, which checkov's Bicep parser cannot read.

@description('Immutable unique name of the app registration in the home tenant.')
param uniqueName string

@description('Display name shown in the consent prompt and in each tenant\'s enterprise apps.')
param displayName string

@description('Add the federated credential that trusts the managed identity.')
param federated bool

@description('Object (principal) id of the function app\'s managed identity.')
param managedIdentityPrincipalId string

@description('Audience of the managed identity token (api://AzureADTokenExchange in the public cloud).')
param tokenExchangeAudience string

@description('Also declare ActivityFeed.ReadDlp (needed by tenants that collect DLP.All).')
param requestDlpPermission bool

@description('Also declare the Microsoft Graph AuditLogsQuery.Read.All application permission (the Purview audit search backfill). Only the global service has the audit log query API, so main.bicep turns it off for GCC High and DoD.')
param requestAuditSearchPermission bool

@description('Where the admin-consent URL returns the administrator (it needs a registered reply address).')
param consentRedirectUri string

@description('appId of the Office 365 Management APIs service principal.')
param managementApiAppId string = 'c5393580-f805-4401-95e8-94b7a6ef2fc2'

@description('id of its ActivityFeed.Read app role.')
param activityFeedReadRoleId string = '594c1fb6-4f81-4475-ae41-0c394909246c'

@description('id of its ActivityFeed.ReadDlp app role.')
param activityFeedReadDlpRoleId string = '4807a72c-ad38-4250-94c9-4eabfe26cd55'

@description('appId of Microsoft Graph (the same in every tenant and cloud).')
param graphAppId string = '00000003-0000-0000-c000-000000000000'

// The Application "Identifier" of AuditLogsQuery.Read.All in Microsoft's Graph permissions reference
// (https://learn.microsoft.com/graph/permissions-reference#auditlogsqueryreadall). The broad permission
// rather than the AuditLogsQuery-<workload> ones: the backfill searches every record type the feed collects.
@description('id of Microsoft Graph\'s AuditLogsQuery.Read.All app role.')
param auditLogsQueryReadAllRoleId string = '5e1e9171-754d-478c-812c-f1755a9a4c2d'

@description('Also declare Microsoft Graph AuditLog.Read.All and Directory.Read.All (application), which polling the Entra ID sign-in and audit logs needs (the list endpoints require both).')
param requestEntraLogPermission bool = false

@description('id of Microsoft Graph\'s AuditLog.Read.All app role.')
param auditLogReadAllRoleId string = 'b0afded3-3588-46d8-8b3d-9842eff778da'

@description('id of Microsoft Graph\'s Directory.Read.All app role.')
param directoryReadAllRoleId string = '7ab1d382-f21e-4acd-a863-ba3e13f7da61'

var readAccess = [
  {
    id: activityFeedReadRoleId
    type: 'Role'
  }
]
var dlpAccess = requestDlpPermission ? [
  {
    id: activityFeedReadDlpRoleId
    type: 'Role'
  }
] : []
// A resource entry without permissions is meaningless, so Graph is listed only with the permission.
var searchRoles = requestAuditSearchPermission ? [
  {
    id: auditLogsQueryReadAllRoleId
    type: 'Role'
  }
] : []
var entraLogRoles = requestEntraLogPermission ? [
  {
    id: auditLogReadAllRoleId
    type: 'Role'
  }
  {
    id: directoryReadAllRoleId
    type: 'Role'
  }
] : []
var graphRoles = concat(searchRoles, entraLogRoles)
var declaresGraph = requestAuditSearchPermission ? true : requestEntraLogPermission
var graphAccess = declaresGraph ? [
  {
    resourceAppId: graphAppId
    resourceAccess: graphRoles
  }
] : []

// The tokens of a managed identity in this tenant are issued by this tenant's v2.0 endpoint.
var issuer = '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'

resource app 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: 'AzureADMultipleOrgs'
  web: {
    redirectUris: [
      consentRedirectUri
    ]
  }
  // What an administrator of a monitored tenant consents to (admin-consent URL or onboarding/).
  requiredResourceAccess: concat([
    {
      resourceAppId: managementApiAppId
      resourceAccess: concat(readAccess, dlpAccess)
    }
  ], graphAccess)
}

resource managedIdentityCredential 'Microsoft.Graph/applications/federatedIdentityCredentials@v1.0' = if (federated) {
  name: '${app.uniqueName}/auditlake-function-identity'
  description: 'The AuditLake function app\'s user-assigned managed identity'
  issuer: issuer
  subject: managedIdentityPrincipalId
  audiences: [
    tokenExchangeAudience
  ]
}

output appId string = app.appId
output issuer string = issuer
