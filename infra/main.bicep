// AuditLake platform: one deployment per collector, into a resource group of the tenant that
// hosts it. Wires infra/modules only; each monitored Microsoft 365 tenant is then onboarded
// with infra/onboarding (see infra/README.md).

@description('Azure region of every resource (Flex Consumption must be offered there).')
param location string = resourceGroup().location

@description('Prefix of resource names: lower-case letters, digits and hyphens, starting with a letter; a short hash of the resource group makes them unique.')
@minLength(2)
@maxLength(10)
param namePrefix string = 'auditlake'

@description('Tags applied to every resource.')
param tags object = {}

@description('Tenants to collect: [{"tenantId": GUID, "contentTypes": [...] (default all five), "cloud": "Enterprise|GCC|GCCHigh|DoD" (default: cloud)}]. Becomes AUDITLAKE_TENANTS.')
@minLength(1)
param tenants array

@description('Default Microsoft 365 cloud of the tenants (AUDITLAKE_CLOUD): selects the Management API root, token authority and audience.')
@allowed(['Enterprise', 'GCC', 'GCCHigh', 'DoD'])
param cloud string = 'Enterprise'

@description('PublisherIdentifier sent on every API call (AUDITLAKE_PUBLISHER_ID): your own tenant, so requests use your quota.')
param publisherId string = tenant().tenantId

@description('How the collector authenticates to the Management Activity API: federated (the app registration trusts the managed identity; no secret) or secret (a client secret in Key Vault).')
@allowed(['federated', 'secret'])
param authMode string = 'federated'

@description('Create the multi-tenant app registration with the Microsoft Graph Bicep extension. False: give appId of an existing one (and add its federated credential yourself).')
param createAppRegistration bool = true

@description('Application (client) id of an existing multi-tenant app registration (createAppRegistration false).')
param appId string = ''

@description('Display name of the app registration created here.')
param appDisplayName string = 'AuditLake collector'

@description('Declare ActivityFeed.ReadDlp on the app registration (tenants that collect DLP.All need it).')
param requestDlpPermission bool = true

@description('Reply address of the app registration: where the admin-consent URL lands the administrator afterwards.')
param consentRedirectUri string = '${environment().portal}/'

@description('Name of the Key Vault secret that holds the client secret (authMode secret).')
param clientSecretName string = 'management-api-client-secret'

@description('Timer schedule, six-field NCRONTAB (COLLECT_SCHEDULE).')
param collectSchedule string = '0 */2 * * * *'

@description('Resource id of an existing ADX cluster to use; empty creates a new cluster.')
param adxClusterResourceId string = ''

@description('SKU of a new ADX cluster.')
param adxSkuName string = 'Dev(No SLA)_Standard_E2a_v4'

@description('Instances of a new ADX cluster.')
@minValue(1)
param adxCapacity int = 1

@description('ADX database name (ADX_DATABASE).')
param adxDatabaseName string = 'auditlake'

@description('Days ADX keeps data (database soft-delete period; 3650 = 10 years).')
@minValue(1)
param adxRetentionDays int = 3650

@description('Days of data ADX keeps in hot cache.')
@minValue(0)
param adxHotCacheDays int = 31

@description('Managed streaming ingestion (ADX_STREAMING): fresher data; a new cluster is created with streaming ingestion on.')
param adxStreaming bool = false

@description('Most instances the function app scales to (Flex Consumption: at least 40).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of one function app instance.')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@description('Days Log Analytics keeps the app\'s logs.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 90

@description('Days every version of a dead-letter blob (raw content and messages that could not be processed) stays immutable.')
@minValue(1)
@maxValue(146000)
param deadletterRetentionDays int = 365

@description('Set true once the dead-letter container\'s retention policy has been locked (az storage container immutability-policy lock): a locked policy can only be extended, and the template then leaves it alone.')
param deadletterRetentionLocked bool = false

var suffix = take(uniqueString(subscription().id, resourceGroup().id, namePrefix), 8)
var prefix = toLower(namePrefix)
var compactPrefix = replace(prefix, '-', '')
var names = {
  identity: 'id-${prefix}-${suffix}'
  storage: 'st${compactPrefix}${suffix}'
  workspace: 'log-${prefix}-${suffix}'
  appInsights: 'appi-${prefix}-${suffix}'
  keyVault: 'kv-${prefix}-${suffix}'
  plan: 'plan-${prefix}-${suffix}'
  functionApp: 'func-${prefix}-${suffix}'
  adxCluster: 'adx${compactPrefix}${suffix}'
  appRegistration: '${prefix}-collector-${suffix}'
}

// Names the code reads through app settings (CONTENT_QUEUE, STATE_TABLE_PREFIX, DEADLETTER_CONTAINER).
var contentQueueName = 'content'
var stateTablePrefix = 'AuditLake'
var deadletterContainerName = 'deadletter'
var deploymentContainerName = 'app-package-${suffix}'

// The audience Entra ID expects on a managed identity token used as a federated credential.
var tokenExchangeAudience = environment().name == 'AzureUSGovernment' ? 'api://AzureADTokenExchangeUSGov' : 'api://AzureADTokenExchange'

var newAdxCluster = empty(adxClusterResourceId)
var adxClusterName = newAdxCluster ? names.adxCluster : last(split(adxClusterResourceId, '/'))
var adxSubscriptionId = newAdxCluster ? subscription().subscriptionId : split(adxClusterResourceId, '/')[2]
var adxResourceGroup = newAdxCluster ? resourceGroup().name : split(adxClusterResourceId, '/')[4]

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: names.identity
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: names.storage
    location: location
    tags: tags
    contentQueueName: contentQueueName
    stateTablePrefix: stateTablePrefix
    deadletterContainerName: deadletterContainerName
    deploymentContainerName: deploymentContainerName
    deadletterRetentionDays: deadletterRetentionDays
    deadletterRetentionLocked: deadletterRetentionLocked
    principalId: identity.outputs.principalId
    workspaceId: monitoring.outputs.workspaceId
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    workspaceName: names.workspace
    appInsightsName: names.appInsights
    location: location
    tags: tags
    retentionInDays: logRetentionDays
    principalId: identity.outputs.principalId
  }
}

module keyVault 'modules/keyvault.bicep' = if (authMode == 'secret') {
  name: 'keyvault'
  params: {
    name: names.keyVault
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    workspaceId: monitoring.outputs.workspaceId
  }
}

module appRegistration 'modules/app-registration.bicep' = if (createAppRegistration) {
  name: 'app-registration'
  params: {
    uniqueName: names.appRegistration
    displayName: appDisplayName
    federated: authMode == 'federated'
    managedIdentityPrincipalId: identity.outputs.principalId
    tokenExchangeAudience: tokenExchangeAudience
    requestDlpPermission: requestDlpPermission
    consentRedirectUri: consentRedirectUri
  }
}

module adxCluster 'modules/adx-cluster.bicep' = if (newAdxCluster) {
  name: 'adx-cluster'
  params: {
    name: names.adxCluster
    location: location
    tags: tags
    skuName: adxSkuName
    capacity: adxCapacity
    enableStreamingIngest: adxStreaming
    workspaceId: monitoring.outputs.workspaceId
  }
}

module adxDatabase 'modules/adx-database.bicep' = {
  name: 'adx-database'
  scope: resourceGroup(adxSubscriptionId, adxResourceGroup)
  params: {
    clusterName: adxClusterName
    databaseName: adxDatabaseName
    retentionDays: adxRetentionDays
    hotCacheDays: adxHotCacheDays
    ingestorClientId: identity.outputs.clientId
    ingestorTenantId: subscription().tenantId
  }
  dependsOn: [
    adxCluster
  ]
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: names.functionApp
    planName: names.plan
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    blobEndpoint: storage.outputs.blobEndpoint
    queueEndpoint: storage.outputs.queueEndpoint
    tableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    contentQueueName: storage.outputs.contentQueueName
    stateTablePrefix: stateTablePrefix
    deadletterContainerName: storage.outputs.deadletterContainerName
    appInsightsConnectionString: monitoring.outputs.connectionString
    workspaceId: monitoring.outputs.workspaceId
    adxIngestUri: adxDatabase.outputs.ingestUri
    adxEngineUri: adxDatabase.outputs.queryUri
    adxDatabase: adxDatabase.outputs.databaseName
    adxStreaming: adxStreaming
    tenants: tenants
    cloud: cloud
    publisherId: publisherId
    collectSchedule: collectSchedule
    authMode: authMode
    apiClientId: createAppRegistration ? appRegistration.outputs.appId : appId
    tokenExchangeAudience: tokenExchangeAudience
    keyVaultUri: authMode == 'secret' ? keyVault.outputs.vaultUri : ''
    clientSecretName: clientSecretName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
}

output functionAppName string = functionApp.outputs.name
output adxQueryUri string = adxDatabase.outputs.queryUri
output adxIngestUri string = adxDatabase.outputs.ingestUri
output adxDatabase string = adxDatabase.outputs.databaseName
output managedIdentityClientId string = identity.outputs.clientId
output managedIdentityPrincipalId string = identity.outputs.principalId
output apiClientId string = createAppRegistration ? appRegistration.outputs.appId : appId
// The federated credential of an existing app registration: issuer, subject (the principal id above), audience.
output federatedCredentialIssuer string = '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
output federatedCredentialAudience string = tokenExchangeAudience
output keyVaultName string = authMode == 'secret' ? keyVault.outputs.name : ''
output storageAccountName string = storage.outputs.name
// Where the storage services, the function app, the Key Vault and a new ADX cluster send their logs.
output logAnalyticsWorkspaceId string = monitoring.outputs.workspaceId
